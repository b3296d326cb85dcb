"""The alert rules: one template (``monitoring/alert-rules.yml.j2``) rendered for the local
cluster, docker-compose and the Kubernetes PrometheusRule, which differ only in the name of the
sagaz scrape job and whether WAL archiving is deployed."""

from __future__ import annotations

from dataclasses import dataclass

from sagaz.deploy.render import render

__all__ = ["ALERTS", "AlertSettings", "alert_rules"]

ALERTS = ("SagazReplicationLagHigh", "SagazPoolSaturated", "SagazDeadLetterEvents",
          "SagazFuturePartitionsMissing", "SagazDefaultPartitionRows", "SagazSagaFailureRate",
          "SagazWorkerDown", "SagazWalArchiveNotFlowing")
"""Every alert the template can produce (the archive alert only where backups are deployed)."""


@dataclass(frozen=True)
class AlertSettings:
    """Thresholds (README "Alerts" explains each) and the deployment's names."""

    sagaz_job: str = "sagaz"
    """The scrape job of sagaz's own endpoint (`sagaz worker --metrics-port`): worker down."""
    archive: bool = True
    """WAL archiving is deployed (pgBackRest): the archive alert is included."""
    replication_lag_seconds: float = 30
    replication_lag_for: str = "2m"
    waiting_clients: int = 0
    waiting_for: str = "2m"
    dead_letter_events: int = 0
    dead_letter_for: str = "5m"
    min_future_partitions: int = 1
    partitions_for: str = "15m"
    default_rows_for: str = "1h"
    rate_window: str = "10m"
    failure_ratio: float = 0.05
    failure_for: str = "10m"
    worker_for: str = "2m"
    archive_window: str = "15m"
    archive_for: str = "5m"


def alert_rules(settings: AlertSettings | None = None) -> str:
    """The rules file (Prometheus' ``rule_files`` format)."""
    return render("monitoring/alert-rules.yml.j2", s=settings or AlertSettings())

