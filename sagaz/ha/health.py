"""Health of a running local cluster: each node's role and replay position, replication as the
primary sees it (pg_stat_replication, slots), the PgBouncer pools (admin console ``SHOW POOLS``,
``SHOW STATS``, ``SHOW DATABASES``) and the partition count per table.

``sagaz dev status`` prints it; the supervisor uses :data:`IS_IN_RECOVERY`; Prometheus metrics
(``sagaz_postgres_replication_lag_seconds``, ``sagaz_pgbouncer_*``, ``sagaz_partition_count``)
are meant to read the same dataclasses.

The SQL here reads PostgreSQL's system views and functions only, not the sagaz schema, so it
stays next to the code that reads it instead of in ``storage/sql/``: the partition statistics,
which do read the schema, come from the storage's named operation
(:func:`sagaz.storage.postgresql.maintenance.partition_statistics`).

Every connection is direct (never through a pool), short (``CONNECT_TIMEOUT``) and autocommit;
an unreachable part is reported in its ``error`` field, never raised: status must show what is
broken. No error text holds a password.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from sagaz.errors import ConfigurationError, SagazError
from sagaz.ha.local import READER_USER, LocalCluster

__all__ = [
    "CONNECT_TIMEOUT", "IS_IN_RECOVERY", "ClusterHealth", "NodeHealth", "PoolHealth",
    "ReplicationStat", "SlotStat", "collect", "lost_slot_message", "node_health", "pool_health",
    "read_slots",
]

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 2
"""Seconds; libpq's minimum. A node that does not answer within it is reported unreachable."""

IS_IN_RECOVERY = "SELECT pg_is_in_recovery()"
"""True on a replica (a standby replaying WAL), false on the primary."""

NODE_STATUS = """
SELECT pg_is_in_recovery() AS in_recovery,
       CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
            ELSE pg_current_wal_lsn() END::text AS lsn,
       pg_last_wal_receive_lsn()::text AS receive_lsn,
       -- Seconds the replica's replay is behind: 0 when it replayed all it received (an idle
       -- primary sends nothing, and the age of the last replayed commit would grow for ever).
       CASE WHEN NOT pg_is_in_recovery() THEN NULL
            WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
       END AS replay_delay_seconds,
       pg_last_xact_replay_timestamp()::text AS last_replayed_commit,
       (SELECT status FROM pg_stat_wal_receiver) AS receiver_status,
       (SELECT sender_host FROM pg_stat_wal_receiver) AS upstream_host
"""
"""One row about the node it runs on (pg_stat_wal_receiver's sender columns need pg_monitor)."""

REPLICATION = """
SELECT application_name AS name, host(client_addr) AS client_addr, state, sync_state,
       sent_lsn::text AS sent_lsn, replay_lsn::text AS replay_lsn,
       pg_wal_lsn_diff(pg_current_wal_lsn(), sent_lsn)::bigint AS send_lag_bytes,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS replay_lag_bytes,
       -- NULL once the replica has been caught up and idle for a while: no lag to measure.
       extract(epoch FROM replay_lag)::float8 AS replay_lag_seconds
  FROM pg_stat_replication
 ORDER BY application_name
"""
"""On the primary: one row per connected standby (application_name is the node's name)."""

SLOTS = """
SELECT slot_name AS name, active,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained_bytes,
       -- NULL for a slot created without reserving WAL yet; such a slot cannot be lost.
       coalesce(wal_status, 'reserved') AS wal_status, safe_wal_size
  FROM pg_replication_slots
 WHERE slot_type = 'physical'
 ORDER BY slot_name
"""
"""On the primary: the physical slots, the WAL each keeps (an inactive one grows) and how much
more may be written before the cap (max_slot_wal_keep_size) invalidates it."""

_POOL_COLUMNS = ("cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used", "sv_login")
_STATS_COLUMNS = ("total_xact_count", "total_query_count", "avg_xact_time", "avg_query_time",
                  "avg_wait_time")


@dataclass
class NodeHealth:
    name: str
    host: str
    port: int
    configured_role: str
    """What cluster.json says: primary or replica."""
    running: bool
    pid: int | None = None
    role: str = "down"
    """What the node says (pg_is_in_recovery): primary, replica; down or unreachable."""
    lsn: str | None = None
    """Current WAL position (primary) or last replayed one (replica)."""
    receive_lsn: str | None = None
    replay_delay_seconds: float | None = None
    last_replayed_commit: str | None = None
    receiver_status: str | None = None
    upstream_host: str | None = None
    error: str | None = None


@dataclass
class ReplicationStat:
    name: str
    client_addr: str | None
    state: str | None
    sync_state: str | None
    sent_lsn: str | None
    replay_lsn: str | None
    send_lag_bytes: int | None
    replay_lag_bytes: int | None
    replay_lag_seconds: float | None


@dataclass
class SlotStat:
    name: str
    active: bool
    retained_bytes: int | None
    wal_status: str = "reserved"
    """pg_replication_slots.wal_status: ``reserved`` (within max_wal_size), ``extended`` (within
    the cap), ``unreserved`` (beyond the cap: lost at the next checkpoint unless its replica
    catches up first) or ``lost`` (the WAL its replica needs is gone: it needs a new base
    backup)."""
    safe_wal_size: int | None = None
    """Bytes of WAL the primary may still write before this slot is lost (None: no cap)."""

    @property
    def lost(self) -> bool:
        return self.wal_status == "lost"


@dataclass
class PoolHealth:
    role: str
    """rw or ro."""
    port: int
    running: bool
    hosts: list[str] = field(default_factory=list)
    """The hosts PgBouncer serves the database from, as it loaded them (SHOW DATABASES)."""
    paused: bool = False
    pools: list[dict[str, Any]] = field(default_factory=list)
    """SHOW POOLS per database/user: cl_active, cl_waiting, sv_active, sv_idle, sv_used,
    sv_login, maxwait_seconds."""
    stats: list[dict[str, Any]] = field(default_factory=list)
    """SHOW STATS per database: total_xact_count, total_query_count, avg_*_time (microseconds)."""
    error: str | None = None


@dataclass
class ClusterHealth:
    directory: str
    primary: str
    nodes: list[NodeHealth]
    replication: list[ReplicationStat]
    slots: list[SlotStat]
    pools: dict[str, PoolHealth]
    partitions: dict[str, int]
    """Partitions per partitioned table (DEFAULT included), from get_partition_statistics()."""
    supervisor_pid: int | None
    errors: list[str] = field(default_factory=list)
    """Cluster-level problems (the primary unreachable, partitions unreadable...)."""

    @property
    def healthy(self) -> bool:
        """Every node and pool up, each node in its configured role, no slot lost, no error."""
        return (not self.errors
                and not any(s.lost for s in self.slots)
                and all(n.role == n.configured_role for n in self.nodes)
                and all(p.running and p.error is None for p in self.pools.values()))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy}


def collect(cluster: LocalCluster) -> ClusterHealth:
    """Everything ``sagaz dev status`` shows, gathered over short direct connections."""
    from sagaz.ha.supervisor import supervisor_pid

    nodes = [node_health(cluster, name) for name in cluster.state.nodes]
    health = ClusterHealth(
        directory=str(cluster.directory), primary=cluster.state.primary, nodes=nodes,
        replication=[], slots=[], pools={r: pool_health(cluster, r) for r in ("rw", "ro")},
        partitions={}, supervisor_pid=supervisor_pid(cluster))
    primary = next(n for n in nodes if n.name == cluster.state.primary)
    if primary.role != "primary":
        health.errors.append(f"the primary {primary.name} is {primary.role}"
                             + (f": {primary.error}" if primary.error else ""))
        return health
    try:
        with _connect(_monitor_dsn(cluster, primary.name)) as conn:
            cur = conn.cursor(row_factory=dict_row)
            health.replication = [ReplicationStat(**r) for r in cur.execute(REPLICATION)]
            health.slots = [SlotStat(**r) for r in cur.execute(SLOTS)]
    except psycopg.Error as exc:
        health.errors.append(f"replication statistics of {primary.name}: {_reason(exc)}")
    health.errors += [lost_slot_message(cluster, slot.name, health.supervisor_pid)
                      for slot in health.slots if slot.lost]
    try:
        from sagaz.storage.postgresql.maintenance import partition_statistics

        stats = partition_statistics(cluster.dsn(user=READER_USER))
        health.partitions = dict(sorted(Counter(p.table_name for p in stats).items()))
    except SagazError as exc:
        health.errors.append(f"partition statistics: {exc}")
    return health


def read_slots(cluster: LocalCluster) -> list[SlotStat]:
    """The primary's physical replication slots (SagazError when it does not answer)."""
    try:
        with _connect(_monitor_dsn(cluster, cluster.state.primary)) as conn:
            return [SlotStat(**r) for r in conn.cursor(row_factory=dict_row).execute(SLOTS)]
    except psycopg.Error as exc:
        raise SagazError(f"replication slots of {cluster.state.primary}: {_reason(exc)}") from exc


def lost_slot_message(cluster: LocalCluster, slot: str, supervisor: int | None) -> str:
    """What a lost slot means, and what happens next (one line)."""
    cap = cluster.state.max_slot_wal_keep_size
    what = (f"replication slot {slot} is lost: its replica fell more than "
            f"max_slot_wal_keep_size ({cap}) behind, so {cluster.state.primary} removed WAL it "
            "needs and it can no longer stream")
    if slot not in cluster.state.replicas:
        return (f"{what}; no replica of this cluster uses it: drop it with "
                f"SELECT pg_drop_replication_slot('{slot}')")
    if supervisor is not None:
        return (f"{what}; the supervisor (pid {supervisor}) is rebuilding {slot} from a fresh "
                f"base backup with a new slot (see {cluster.directory / 'supervisor.log'})")
    return (f"{what}; it needs a fresh base backup: `sagaz ha rejoin {slot}` (or `sagaz dev up`, "
            "whose supervisor rebuilds it automatically)")


def node_health(cluster: LocalCluster, name: str) -> NodeHealth:
    node = cluster.node(name)
    configured = "primary" if name == cluster.state.primary else "replica"
    health = NodeHealth(name, node.host, node.port, configured, node.running, node.pid)
    if not health.running:
        return health
    try:
        with _connect(_monitor_dsn(cluster, name)) as conn:
            row = conn.cursor(row_factory=dict_row).execute(NODE_STATUS).fetchone()
    except psycopg.Error as exc:
        health.role, health.error = "unreachable", _reason(exc)
        return health
    assert row is not None
    health.role = "replica" if row.pop("in_recovery") else "primary"
    for key, value in row.items():
        setattr(health, key, value)
    return health


def pool_health(cluster: LocalCluster, role: str) -> PoolHealth:
    bouncer = cluster.bouncer(role, [cluster.state.primary])
    health = PoolHealth(role, bouncer.port, bouncer.pid is not None)
    if not health.running:
        return health
    dbname = cluster.state.dbname
    try:
        with _connect(cluster.stats_dsn(role)) as conn:
            cur = conn.cursor(row_factory=dict_row)
            for db in cur.execute("SHOW DATABASES").fetchall():
                if db["name"] == dbname:
                    health.hosts = str(db["host"] or "").split(",")
                    health.paused = bool(db["paused"])
            for pool in cur.execute("SHOW POOLS").fetchall():
                if pool["database"] == dbname:
                    health.pools.append({
                        "database": pool["database"], "user": pool["user"],
                        **{c: int(pool[c]) for c in _POOL_COLUMNS if c in pool},
                        "maxwait_seconds": int(pool["maxwait"])
                        + int(pool.get("maxwait_us") or 0) / 1e6})
            for stat in cur.execute("SHOW STATS").fetchall():
                if stat["database"] == dbname:
                    health.stats.append({"database": stat["database"],
                                         **{c: int(stat[c]) for c in _STATS_COLUMNS if c in stat}})
    except psycopg.Error as exc:
        health.error = _reason(exc)
    except ConfigurationError as exc:  # no console password (a cluster of an earlier sagaz)
        health.error = str(exc)
    return health


def _monitor_dsn(cluster: LocalCluster, node: str) -> str:
    """Node ``node`` as the read-only role: its pg_monitor membership shows every figure here
    (pg_stat_replication's lag, pg_stat_wal_receiver's sender); health needs no superuser."""
    return cluster.node_dsn(node, user=READER_USER, dbname=cluster.state.dbname)


def _connect(conninfo: str) -> psycopg.Connection[Any]:
    # prepare_threshold=None: PgBouncer's admin console knows no prepared statements.
    return psycopg.connect(conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                           prepare_threshold=None, application_name="sagaz-health")


def _reason(exc: psycopg.Error) -> str:
    """libpq's message on one line (our conninfos carry passwords, libpq never echoes them)."""
    return " ".join(str(exc).split()) or type(exc).__name__
