"""The HA metrics of the design summary, read on scrape (:mod:`sagaz.observability.scrape`), one
component per server so that one that is down or hangs costs only its own figures:

- ``replication`` (on the primary, ``pg_stat_replication``):
  ``sagaz_postgres_replication_lag_seconds{replica}``, ``..._lag_bytes{replica}``;
- ``pgbouncer_<pool>`` (its console, ``SHOW POOLS``):
  ``sagaz_pgbouncer_active_connections{pool}``, ``sagaz_pgbouncer_waiting_connections{pool}``;
- ``partitions`` (``get_partition_statistics()``): ``sagaz_partition_count{table}``,
  ``..._size_bytes{table}``, ``..._default_rows{table}``, ``..._future_count{table}``;
- ``postgres_<node>``: ``sagaz_postgres_up{node,role}`` (the role the node reports, or the one
  it is configured with when it does not answer).

Connections are direct, short (libpq's 2 s connect timeout, a statement timeout on PostgreSQL)
and autocommit; the conninfos carry passwords, which no message repeats.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client.core import GaugeMetricFamily, Metric
from psycopg.rows import dict_row

from sagaz.ha.health import IS_IN_RECOVERY, REPLICATION
from sagaz.observability.scrape import DEFAULT_TIMEOUT, Component

__all__ = ["HaTargets", "cluster_targets", "ha_components"]

CONNECT_TIMEOUT = 2
"""Seconds; libpq's minimum."""


@dataclass(frozen=True)
class HaTargets:
    """Where the HA figures come from."""

    primary: str | None = None
    """A conninfo of the primary (a role in pg_monitor): replication and partitions."""
    nodes: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Node name -> (conninfo, configured role: primary or replica), for sagaz_postgres_up."""
    pgbouncers: dict[str, str] = field(default_factory=dict)
    """Pool name (rw, ro) -> conninfo of that PgBouncer's console (a stats user)."""
    database: str | None = None
    """Only the PgBouncer pools of this database (None: every database but the console's)."""


def ha_components(
    targets: HaTargets, *, timeout: float = DEFAULT_TIMEOUT,
    clock: Callable[[], float] = time.time,
) -> list[Component]:
    """One component per figure source of ``targets``. ``clock`` (epoch seconds) decides which
    partitions lie in the future."""
    found: list[Component] = []
    if targets.primary is not None:
        primary = targets.primary
        found.append(Component("replication", lambda: _replication(primary, timeout), timeout))
        found.append(Component("partitions", lambda: _partitions(primary, timeout, clock),
                               timeout))
    for pool, console in sorted(targets.pgbouncers.items()):
        found.append(Component(f"pgbouncer_{pool}",
                               partial(_pgbouncer, pool, console, targets.database), timeout))
    for node, (dsn, role) in sorted(targets.nodes.items()):
        found.append(Component(f"postgres_{node}", partial(_postgres_up, node, dsn, timeout),
                               timeout, when_failed=partial(_up, node, role, 0)))
    return found


def _connect(conninfo: str, timeout: float | None) -> psycopg.Connection[Any]:
    options: dict[str, Any] = {}
    if timeout is not None:  # PgBouncer's console takes no startup options
        options["options"] = f"-c statement_timeout={max(1, int(timeout * 1000))}"
    # prepare_threshold=None: PgBouncer's console knows no prepared statements.
    return psycopg.connect(conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                           prepare_threshold=None, application_name="sagaz-metrics", **options)


def _replication(dsn: str, timeout: float) -> list[Metric]:
    seconds = GaugeMetricFamily(
        "sagaz_postgres_replication_lag_seconds",
        "How far a replica's replay is behind the primary, in time (0 when caught up).",
        labels=["replica"])
    size = GaugeMetricFamily(
        "sagaz_postgres_replication_lag_bytes",
        "WAL the primary wrote that a replica has not replayed yet.", labels=["replica"])
    with _connect(dsn, timeout) as conn:
        rows = conn.cursor(row_factory=dict_row).execute(REPLICATION).fetchall()
    for row in rows:
        lag_bytes = row["replay_lag_bytes"]
        lag_seconds = row["replay_lag_seconds"]
        # NULL once the replica has been caught up and idle for a while: nothing to measure.
        if lag_seconds is None or lag_bytes == 0:
            lag_seconds = 0.0
        seconds.add_metric([row["name"]], float(lag_seconds))
        size.add_metric([row["name"]], float(lag_bytes or 0))
    return [seconds, size]


def _pgbouncer(pool: str, console: str, database: str | None) -> list[Metric]:
    active = GaugeMetricFamily(
        "sagaz_pgbouncer_active_connections",
        "Client connections linked to a server connection (SHOW POOLS cl_active).",
        labels=["pool"])
    waiting = GaugeMetricFamily(
        "sagaz_pgbouncer_waiting_connections",
        "Client connections waiting for a server connection (SHOW POOLS cl_waiting).",
        labels=["pool"])
    totals = [0, 0]
    with _connect(console, None) as conn:
        for row in conn.cursor(row_factory=dict_row).execute("SHOW POOLS").fetchall():
            name = row["database"]
            if name == "pgbouncer" or (database is not None and name != database):
                continue
            totals[0] += int(row["cl_active"])
            totals[1] += int(row["cl_waiting"])
    active.add_metric([pool], totals[0])
    waiting.add_metric([pool], totals[1])
    return [active, waiting]


def _partitions(dsn: str, timeout: float, clock: Callable[[], float]) -> list[Metric]:
    from sagaz.storage.postgresql.maintenance import partition_statistics

    stats = partition_statistics(dsn)
    now = clock()
    count: dict[str, int] = defaultdict(int)
    size: dict[str, int] = defaultdict(int)
    default_rows: dict[str, int] = defaultdict(int)
    future: dict[str, int] = defaultdict(int)
    for p in stats:
        count[p.table_name] += 1
        size[p.table_name] += p.total_bytes
        if p.is_default:
            default_rows[p.table_name] += p.row_count
        elif p.range_start is not None and p.range_start.timestamp() > now:
            future[p.table_name] += 1
    families = [
        ("sagaz_partition_count", "Partitions of a partitioned table (DEFAULT included).",
         count),
        ("sagaz_partition_size_bytes", "Bytes of a partitioned table, indexes and TOAST included.",
         size),
        ("sagaz_partition_default_rows",
         "Rows in the DEFAULT partition (maintenance moves them out; more means it lags).",
         default_rows),
        ("sagaz_partition_future_count", "Partitions premade for ranges that start later.",
         future),
    ]
    out: list[Metric] = []
    tables = sorted(count)
    for name, text, values in families:
        family = GaugeMetricFamily(name, text, labels=["table"])
        for table in tables:
            family.add_metric([table], values.get(table, 0))
        out.append(family)
    return out


def _up(node: str, role: str, value: int) -> list[Metric]:
    up = GaugeMetricFamily("sagaz_postgres_up",
                           "1 when the node answers a query; role as the node reports it (as "
                           "configured when it does not answer).", labels=["node", "role"])
    up.add_metric([node, role], value)
    return [up]


def _postgres_up(node: str, dsn: str, timeout: float) -> list[Metric]:
    with _connect(dsn, timeout) as conn:
        row = conn.execute(IS_IN_RECOVERY).fetchone()
    assert row is not None
    return _up(node, "replica" if row[0] else "primary", 1)


def cluster_targets(directory: Path) -> HaTargets:
    """The targets of the local cluster in ``directory`` (``sagaz dev up``), read again on each
    call: after a failover the primary is another node. Every connection is the read-only
    monitoring role (pg_monitor) or PgBouncer's stats user: metrics need no superuser."""
    from sagaz.ha.local import READER_USER, LocalCluster

    cluster = LocalCluster.load(directory)
    state = cluster.state
    nodes = {name: (cluster.node_dsn(name, user=READER_USER, dbname=state.dbname),
                    "primary" if name == state.primary else "replica") for name in state.nodes}
    return HaTargets(
        primary=nodes[state.primary][0], nodes=nodes,
        pgbouncers={role: cluster.stats_dsn(role) for role in ("rw", "ro")},
        database=state.dbname)
