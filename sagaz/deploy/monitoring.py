"""The monitoring files of the docker-compose deployment: Prometheus' configuration and alert
rules (the templates the local cluster renders too, :mod:`sagaz.monitoring`), Grafana's
dashboards and their provisioning, and the image of the exporters (Debian's packages, as
locally, so that every deployment exports the same metric names)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from sagaz.deploy.bundle import GeneratedFile
from sagaz.deploy.render import render
from sagaz.monitoring.dashboards import DASHBOARDS, grafana_json
from sagaz.monitoring.rules import AlertSettings, alert_rules
from sagaz.monitoring.scrape import ScrapeJob, ScrapeTarget, prometheus_config

__all__ = ["EXPORTER_SCRIPT", "EXPORTERS_BASE_IMAGE", "EXPORTERS_IMAGE", "HA_METRICS_PORT",
           "METRICS_PORT",
           "ServerExporter", "compose_monitoring_files", "server_exporters"]

METRICS_PORT = 9464
"""sagaz's own endpoint in the containers (`sagaz worker --metrics-port`)."""
HA_METRICS_PORT = 9465
"""`sagaz metrics serve` of docker-compose: replication lag, pools, partitions, nodes up."""
EXPORTERS_IMAGE = "sagaz/prometheus-exporters:bookworm"
EXPORTERS_BASE_IMAGE = "debian:bookworm-slim"
EXPORTER_SCRIPT = "/usr/local/lib/sagaz/pgbouncer_exporter.py"
DASHBOARDS_PATH = "/var/lib/grafana/dashboards/sagaz"


@dataclass(frozen=True)
class ServerExporter:
    service: str
    """The exporter's service, e.g. postgres-exporter-replica."""
    server: str
    """The PostgreSQL service it reads (label ``node``)."""


def server_exporters(replica_names: list[str]) -> list[ServerExporter]:
    """One postgres_exporter per server: ``postgres-exporter`` for the primary,
    ``postgres-exporter-replica[-N]`` for each replica."""
    return [ServerExporter("postgres-exporter", "postgres-primary"),
            *(ServerExporter(name.replace("postgres-", "postgres-exporter-", 1), name)
              for name in replica_names)]


def _jobs(exporters: list[ServerExporter], pool_roles: list[str]) -> list[ScrapeJob]:
    return [
        ScrapeJob("sagaz", [ScrapeTarget(f"sagaz-worker:{METRICS_PORT}"),
                            ScrapeTarget(f"sagaz-metrics:{HA_METRICS_PORT}")]),
        ScrapeJob("postgres", [ScrapeTarget(f"{e.service}:9187", {"node": e.server})
                               for e in exporters]),
        ScrapeJob("pgbouncer", [
            ScrapeTarget(f"pgbouncer-exporter{'' if role == 'rw' else '-' + role}:9127",
                         {"pool": role}) for role in pool_roles]),
    ]


def compose_monitoring_files(replica_names: list[str],
                             pool_roles: list[str]) -> list[GeneratedFile]:
    exporters = server_exporters(replica_names)
    script = resources.files("sagaz.monitoring").joinpath("pgbouncer_exporter.py")
    return [
        GeneratedFile("monitoring/prometheus.yml", prometheus_config(
            _jobs(exporters, pool_roles), self_address="localhost:9090",
            rule_files=["alert-rules.yml"])),  # beside prometheus.yml
        # The compose deployment always archives WAL (pgbackrest-backup).
        GeneratedFile("monitoring/alert-rules.yml", alert_rules(AlertSettings(archive=True))),
        GeneratedFile("monitoring/grafana-dashboards.yml", render(
            "monitoring/grafana-dashboards.yml.j2", path=DASHBOARDS_PATH,
            titles=[d.title for d in DASHBOARDS])),
        *(GeneratedFile(f"monitoring/dashboards/{d.file_name}", grafana_json(d))
          for d in DASHBOARDS),
        GeneratedFile("monitoring/exporters/Dockerfile", render(
            "monitoring/exporters.Dockerfile.j2", base_image=EXPORTERS_BASE_IMAGE,
            script_path=EXPORTER_SCRIPT)),
        GeneratedFile("monitoring/exporters/pgbouncer_exporter.py",
                      script.read_text(encoding="utf-8")),
    ]
