"""The Grafana dashboards of a sagaz deployment, as data: each dashboard's panels and their PromQL
(:data:`DASHBOARDS`), and the dashboard JSON that ``sagaz init`` provisions (:func:`grafana_json`).
Charts drawn elsewhere (the benchmark report) read the same queries from here.

Metric sources: sagaz's own endpoint (``sagaz_*``: ``sagaz worker --metrics-port``, ``sagaz
metrics serve``), postgres_exporter (``pg_*``, one target per server, label ``node``) and
pgbouncer_exporter (``pgbouncer_*``, one target per pool, label ``pool``). README "Dashboards".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DASHBOARDS", "Dashboard", "Panel", "Query", "dashboard_named", "grafana_json",
           "panel_queries"]


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    """Grafana's legend format, e.g. ``{{pool}}``."""


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    """Grafana's unit id: short, s, bytes, percent, reqps, ops."""
    kind: str = "timeseries"
    """timeseries, or stat for a current value."""
    description: str = ""


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    panels: tuple[Panel, ...]
    tags: tuple[str, ...] = field(default=("sagaz",))

    @property
    def file_name(self) -> str:
        return f"{self.uid}.json"

    def expressions(self) -> list[str]:
        return [q.expr for p in self.panels for q in p.queries]


def _q(expr: str, legend: str = "") -> Query:
    return Query(" ".join(expr.split()), legend)


_RATE = "5m"

POSTGRES = Dashboard("sagaz-postgres-ha", "PostgreSQL HA Overview", (
    Panel("Servers up", (_q("sagaz_postgres_up", "{{node}} ({{role}})"),
                         _q("pg_up", "{{node}} (exporter)")), kind="stat",
          description="1 when the server answers; role as the server reports it."),
    Panel("Replicas (in recovery)", (_q("pg_settings_in_hot_standby", "{{node}}"),), kind="stat",
          description="1 on a replica, 0 on the primary."),
    Panel("Replication lag", (_q("sagaz_postgres_replication_lag_seconds", "{{replica}}"),),
          unit="s"),
    Panel("Replication lag (WAL bytes)",
          (_q("sagaz_postgres_replication_lag_bytes", "{{replica}}"),), unit="bytes"),
    Panel("Queries by pool",
          (_q(f"sum by (pool) (rate(pgbouncer_requests_total[{_RATE}]))", "{{pool}}"),),
          unit="reqps", description="Queries PgBouncer passed on: rw to the primary, ro to "
                                    "the replicas."),
    Panel("Transactions by server",
          (_q(f"sum by (node) (rate(pg_stat_database_xact_commit[{_RATE}]))", "{{node}} commit"),
           _q(f"sum by (node) (rate(pg_stat_database_xact_rollback[{_RATE}]))",
              "{{node}} rollback")), unit="ops"),
    Panel("Connections by server",
          (_q("sum by (node) (pg_stat_database_numbackends)", "{{node}}"),)),
))

PGBOUNCER = Dashboard("sagaz-pgbouncer", "PgBouncer Pools", (
    Panel("Active clients", (_q("sagaz_pgbouncer_active_connections", "{{pool}}"),)),
    Panel("Waiting clients", (_q("sagaz_pgbouncer_waiting_connections", "{{pool}}"),),
          description="Clients queued for a server connection: above 0 for long, the pool is "
                      "too small (alert SagazPoolSaturated)."),
    Panel("Saturation", (_q(
        "100 * sum by (pool) (pgbouncer_active_servers{database!=\"pgbouncer\"})"
        " / sum by (pool) (pgbouncer_pool_size{database!=\"pgbouncer\"})", "{{pool}}"),),
        unit="percent", description="Server connections in use out of default_pool_size."),
    Panel("Average wait per transaction", (_q(
        f"sum by (pool) (rate(pgbouncer_client_wait_microseconds_total[{_RATE}])) / 1e6"
        f" / sum by (pool) (rate(pgbouncer_transactions_total[{_RATE}]))", "{{pool}}"),),
        unit="s"),
    Panel("Server connections", (
        _q("sum by (pool) (pgbouncer_active_servers)", "{{pool}} active"),
        _q("sum by (pool) (pgbouncer_idle_servers)", "{{pool}} idle"))),
))

PARTITIONS = Dashboard("sagaz-partitions", "Partition Health", (
    Panel("Partitions by table", (_q("sagaz_partition_count", "{{table}}"),)),
    Panel("Size by table", (_q("sagaz_partition_size_bytes", "{{table}}"),), unit="bytes"),
    Panel("Rows in DEFAULT partitions", (_q("sagaz_partition_default_rows", "{{table}}"),),
          description="Rows written while their partition was missing (alert "
                      "SagazDefaultPartitionRows)."),
    Panel("Future partitions", (_q("sagaz_partition_future_count", "{{table}}"),),
          description="Partitions made ahead by maintenance (alert "
                      "SagazFuturePartitionsMissing below 1)."),
    Panel("Maintenance status", (
        _q("min by (table) (sagaz_partition_future_count) >= bool 1", "{{table}} ahead"),
        _q("sagaz_scrape_error", "{{component}} scrape error")), kind="stat",
        description="1 = partitions exist ahead of time; a scrape error means sagaz could not "
                    "read that component."),
))

SAGAS = Dashboard("sagaz-sagas", "Sagas", (
    Panel("Sagas by status", (
        _q(f"sum by (status) (rate(sagaz_saga_total[{_RATE}]))", "{{status}}"),), unit="ops"),
    Panel("Saga duration p50 / p99", (
        _q(f"histogram_quantile(0.5, sum by (le, saga) "
           f"(rate(sagaz_saga_duration_seconds_bucket[{_RATE}])))", "{{saga}} p50"),
        _q(f"histogram_quantile(0.99, sum by (le, saga) "
           f"(rate(sagaz_saga_duration_seconds_bucket[{_RATE}])))", "{{saga}} p99")),
        unit="s"),
    Panel("Compensations", (
        _q(f"sum by (saga, step) (rate(sagaz_compensations_total[{_RATE}]))",
           "{{saga}}.{{step}}"),), unit="ops"),
    Panel("Running sagas", (_q("sagaz_sagas_running"),), kind="stat"),
    Panel("Outbox pending", (_q("sagaz_outbox_pending_events"),)),
    Panel("Outbox publish latency p99 (commit to broker ack)", (
        _q(f"histogram_quantile(0.99, sum by (le) "
           f"(rate(sagaz_outbox_publish_latency_seconds_bucket[{_RATE}])))", "p99"),),
        unit="s"),
    Panel("Outbox events by broker", (
        _q(f"sum by (broker) (rate(sagaz_outbox_published_total[{_RATE}]))",
           "{{broker}} published"),
        _q(f"sum by (broker) (rate(sagaz_outbox_failed_total[{_RATE}]))", "{{broker}} failed")),
        unit="ops"),
    Panel("Dead-lettered events", (_q("sagaz_outbox_dead_letter_events"),), kind="stat",
          description="Events the relay gave up on (alert SagazDeadLetterEvents)."),
))

DASHBOARDS = (POSTGRES, PGBOUNCER, PARTITIONS, SAGAS)


def dashboard_named(title: str) -> Dashboard:
    for dashboard in DASHBOARDS:
        if title in (dashboard.title, dashboard.uid):
            return dashboard
    raise KeyError(f"no dashboard {title!r}; there are "
                   f"{', '.join(d.title for d in DASHBOARDS)}")


def panel_queries() -> dict[str, dict[str, list[str]]]:
    """Dashboard title -> panel title -> its PromQL expressions, in display order."""
    return {d.title: {p.title: [q.expr for q in p.queries] for p in d.panels}
            for d in DASHBOARDS}


_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
_WIDTH = 12
_HEIGHT = 8


def grafana_json(dashboard: Dashboard) -> str:
    """The dashboard as Grafana's JSON model (a ``datasource`` variable picks the Prometheus)."""
    panels: list[dict[str, Any]] = []
    for index, panel in enumerate(dashboard.panels):
        panels.append({
            "id": index + 1, "type": panel.kind, "title": panel.title,
            "description": panel.description, "datasource": _DATASOURCE,
            "gridPos": {"x": (index % 2) * _WIDTH, "y": (index // 2) * _HEIGHT, "w": _WIDTH,
                        "h": _HEIGHT},
            "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}}
            if panel.kind == "timeseries" else {"reduceOptions": {"calcs": ["lastNotNull"]}},
            "targets": [{"refId": chr(ord("A") + i), "datasource": _DATASOURCE, "expr": q.expr,
                         "legendFormat": q.legend} for i, q in enumerate(panel.queries)],
        })
    model = {
        "uid": dashboard.uid, "title": dashboard.title, "tags": list(dashboard.tags),
        "schemaVersion": 39, "version": 1, "editable": True, "timezone": "browser",
        "time": {"from": "now-1h", "to": "now"}, "refresh": "30s",
        "templating": {"list": [{"name": "datasource", "label": "Prometheus",
                                 "type": "datasource", "query": "prometheus"}]},
        "panels": panels,
    }
    return json.dumps(model, indent=2) + "\n"
