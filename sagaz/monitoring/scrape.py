"""The Prometheus configuration of a deployment: its scrape jobs (sagaz's own endpoint, one
postgres_exporter per server, one pgbouncer_exporter per pool) rendered from one template
(``monitoring/prometheus.yml.j2``) for the local cluster and docker-compose."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from sagaz.deploy.render import render

__all__ = ["JOB_DESCRIPTIONS", "ScrapeJob", "ScrapeTarget", "prometheus_config"]

JOB_DESCRIPTIONS = {
    "sagaz": "sagaz's own endpoint (sagaz worker --metrics-port, sagaz metrics serve): sagas, "
             "outbox, partitions, replication lag and pools as sagaz sees them.",
    "postgres": "postgres_exporter, one per server (label node), as the pg_monitor role: "
                "pg_stat_database, pg_stat_archiver, settings.",
    "pgbouncer": "pgbouncer_exporter, one per pool (label pool), as the SHOW-only console "
                 "user: clients, servers, queries, wait time.",
}


@dataclass(frozen=True)
class ScrapeTarget:
    address: str
    """host:port."""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ScrapeJob:
    name: str
    targets: list[ScrapeTarget]

    @property
    def description(self) -> str:
        return JOB_DESCRIPTIONS.get(self.name, self.name)


def prometheus_config(jobs: list[ScrapeJob], *, self_address: str, rule_files: list[str],
                      scrape_interval: str = "15s") -> str:
    """prometheus.yml: ``jobs``, Prometheus itself at ``self_address``, ``rule_files``."""
    return render("monitoring/prometheus.yml.j2", jobs=jobs, self_address=self_address,
                  rule_files=rule_files, scrape_interval=scrape_interval, q=json.dumps)
