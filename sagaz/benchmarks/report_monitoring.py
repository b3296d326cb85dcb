"""What the report's dashboards section needs around the temporary cluster's stage:

- sagaz's metrics endpoint of the benchmark process: the engine's metrics listener on the sagas
  the stage runs;
- a ``sagaz worker`` process with its own endpoint, as deployed beside an application: it
  relays the sagas' lifecycle events (to an in-process broker: nothing leaves the machine's
  loopback or outlives the run), so the outbox panels have their figures;
- what ``sagaz dev up --monitoring`` starts beside its Prometheus: ``sagaz metrics serve
  --cluster`` (the HA figures: lag, pools, partitions, servers up), postgres_exporter per server
  and pgbouncer_exporter per pool; and a temporary Prometheus scraping all of it every 2 s.

When the stage ends, every panel's query of the deployments' dashboards is evaluated over its
window (:func:`sagaz.benchmarks.dashboards.collect_dashboards`)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from sagaz.benchmarks.dashboards import DashboardData, TemporaryPrometheus, collect_dashboards
from sagaz.engine.listeners import SagaListener
from sagaz.ha.addresses import kernel_chosen_port
from sagaz.ha.local import LocalCluster
from sagaz.ha.monitoring import PORT_OFFSET, LocalMonitoring, MonitoredProcess
from sagaz.monitoring.scrape import ScrapeJob, ScrapeTarget

__all__ = ["MONITORING_PORTS", "Monitored", "monitored_cluster"]

MONITORING_PORTS = range(PORT_OFFSET + 1, PORT_OFFSET + 5)
"""Offsets from the cluster's base port that the endpoint and the exporters take."""


class _Exporters(LocalMonitoring):
    """What ``sagaz dev up --monitoring`` runs, without its Prometheus (the report runs its own,
    scraping every 2 s)."""

    def processes(self) -> list[MonitoredProcess]:
        return [p for p in super().processes() if p.name != "prometheus"]


@dataclass
class Monitored:
    """Handed to the stage: the listeners its sagas run with."""

    listeners: list[SagaListener]
    started: float
    dashboards: list[DashboardData] = field(default_factory=list)


@contextmanager
def monitored_cluster(cluster: LocalCluster) -> Iterator[Monitored]:
    """Metrics endpoint, exporters and Prometheus up around the body; afterwards ``dashboards``
    holds every panel's series over the body's window. Everything started is stopped."""
    from sagaz.monitoring.dashboards import DASHBOARDS
    from sagaz.observability.endpoint import serve_metrics
    from sagaz.observability.metrics import Metrics

    metrics = Metrics()
    exporters = _Exporters(cluster)
    loop = asyncio.new_event_loop()  # the endpoint runs no storage coroutine here
    with ExitStack() as stack:
        stack.callback(loop.close)
        stack.callback(exporters.stop)
        exporters.start()
        own_port, worker_port = kernel_chosen_port(), kernel_chosen_port()
        server = serve_metrics(port=own_port, metrics=metrics, loop=loop)
        stack.callback(server.stop)
        worker = _start_worker(cluster, worker_port)
        stack.callback(_stop, worker)
        jobs = [ScrapeJob("sagaz", [ScrapeTarget(f"127.0.0.1:{exporters.sagaz_port}"),
                                    ScrapeTarget(f"127.0.0.1:{own_port}"),
                                    ScrapeTarget(f"127.0.0.1:{worker_port}")]),
                *(job for job in exporters.jobs() if job.name != "sagaz")]
        # Every 2 s: the HA figures take their connections on each scrape, which must end within
        # the interval (Prometheus' scrape timeout) also on a busy machine.
        prometheus = stack.enter_context(TemporaryPrometheus(jobs, interval=2.0))
        for job in ("sagaz", "postgres", "pgbouncer"):
            prometheus.wait_for_scrapes(job, seconds=30)
        run = Monitored([metrics.listener], time.time())
        yield run
        time.sleep(2 * prometheus.interval)  # the last figures scraped too
        run.dashboards = collect_dashboards(prometheus.url, DASHBOARDS, run.started,
                                            time.time())


def _start_worker(cluster: LocalCluster, port: int) -> subprocess.Popen[bytes]:
    """``sagaz worker`` on the cluster (pgbouncer-rw, NOTIFY on the direct URL), relaying to an
    in-process broker, its endpoint on ``port``; no maintenance (it would lock the partitions
    the stage measures)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SAGAZ_")},
           **cluster.env(), "SAGAZ_BROKER_URL": "memory://"}
    with (cluster.directory / "report-worker.log").open("wb") as log:  # removed with the cluster
        return subprocess.Popen(
            [sys.executable, "-m", "sagaz", "worker", "--metrics-port", str(port),
             "--interval", "1", "--maintenance-interval", "0"],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # a graceful drain: the batches in flight finish
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
