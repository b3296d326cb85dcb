"""The monitoring part of ``sagaz dev up|status|down`` (``--monitoring``): Prometheus and the
exporters of :mod:`sagaz.ha.monitoring`, switched on and off, started, and shown."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .output import escape, out, print_warning

if TYPE_CHECKING:
    from sagaz.ha.local import LocalCluster

__all__ = ["monitoring_parts_stopped", "monitoring_running", "monitoring_status",
           "print_monitoring", "set_monitoring", "start_monitoring"]


def set_monitoring(cluster: LocalCluster, enabled: bool) -> None:
    """Record ``--monitoring``/``--no-monitoring`` in cluster.json; switching it off stops the
    processes now."""
    from sagaz.ha.monitoring import LocalMonitoring, stop_monitoring

    if enabled:
        LocalMonitoring(cluster).preflight()
    cluster.state.monitoring = enabled
    cluster.save()
    if not enabled:
        stopped = stop_monitoring(cluster)
        if stopped:
            out.print("stopped " + ", ".join(stopped))


def start_monitoring(cluster: LocalCluster, stage: Callable[[str], None]) -> None:
    from sagaz.ha.monitoring import LocalMonitoring

    stage("prometheus.yml, alert-rules.yml, exporter credentials")
    LocalMonitoring(cluster).start(stage)


def monitoring_parts_stopped(cluster: LocalCluster) -> list[str]:
    if not cluster.state.monitoring:
        return []
    from sagaz.ha.monitoring import LocalMonitoring

    return LocalMonitoring(cluster).stopped()


def monitoring_running(cluster: LocalCluster) -> list[str]:
    from sagaz.errors import ConfigurationError
    from sagaz.ha.monitoring import LocalMonitoring

    try:
        return LocalMonitoring(cluster).running()
    except ConfigurationError:  # the packages were removed meanwhile: nothing of them runs
        return []


def monitoring_status(cluster: LocalCluster) -> dict[str, Any]:
    """For ``dev status --json``: whether it is on, Prometheus' URL, what is stopped."""
    if not cluster.state.monitoring:
        return {"enabled": False}
    from sagaz.ha.monitoring import LocalMonitoring

    monitoring = LocalMonitoring(cluster)
    return {"enabled": True, "prometheus_url": monitoring.url,
            "stopped": monitoring.stopped()}


def print_monitoring(cluster: LocalCluster) -> None:
    if not cluster.state.monitoring:
        return
    status = monitoring_status(cluster)
    out.print(f"prometheus: {escape(status['prometheus_url'])} (alert rules: "
              f"{escape(str(cluster.directory / 'monitoring' / 'alert-rules.yml'))})",
              soft_wrap=True)
    if status["stopped"]:
        print_warning("monitoring not running: " + ", ".join(status["stopped"])
                      + " (`sagaz dev up` starts them)")
