"""Manual failover of the local cluster: promote a replica, and rejoin a former primary (or any
stopped node) as a replica of the current primary.

Promotion, in order (the write pool is unavailable from step 1 to step 5, and only then)::

    1. PAUSE the database on pgbouncer-rw: new transactions wait in PgBouncer instead of failing;
       running ones get ``drain_timeout`` seconds to finish
    2. stop the old primary (fast: what still runs is rolled back), if it still runs; stopping it
       first is what rules out two primaries taking writes
    3. pg_ctl promote the replica, wait until it accepts writes
    4. record it as the primary in cluster.json (the supervisor and later commands follow)
    5. point pgbouncer-rw at it (pgbouncer.ini + RELOAD) and RESUME: waiting clients proceed
    6. create replication slots for the other nodes on the new primary, re-point the other
       replicas to it (they follow the new timeline), and rebuild the old primary as a replica:
       pg_rewind (it copies back only what diverged; possible because initdb enabled data
       checksums) or, when that fails, a fresh pg_basebackup

Rejoin brings a node back as a replica of the current primary with the cheapest step that works:
nothing (it already streams), re-pointing a running replica, starting a stopped one, pg_rewind,
pg_basebackup. A replica whose slot the primary gave up (``wal_status = 'lost'``, it fell more
than max_slot_wal_keep_size behind) goes straight to :func:`rebuild`: the WAL it needs is gone,
so neither a restart nor pg_rewind can bring it back.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from sagaz.errors import ConfigurationError, SagazError
from sagaz.ha.health import CONNECT_TIMEOUT
from sagaz.ha.local import REPLICATION_USER, SUPERUSER, LocalCluster
from sagaz.ha.postgres import PostgresNode
from sagaz.ha.readpool import refresh_read_pool

__all__ = ["PromoteReport", "promote", "rebuild", "rejoin"]

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]

STREAM_TIMEOUT = 30.0
"""Seconds a rejoined node has to stream from the primary."""
_QUICK_STREAM_TIMEOUT = 8.0
"""Seconds a restarted or re-pointed replica gets before the rejoin falls back to pg_rewind."""
# Lines a standby logs when its history diverged from the primary's: it will never stream.
_DIVERGED = ("forked off current database system timeline", "ahead of the WAL flush position",
             "is not a child of", "requested timeline")


@dataclass
class PromoteReport:
    old_primary: str
    new_primary: str
    write_downtime: float
    """Seconds from PAUSE of pgbouncer-rw to the first write it served from the new primary."""
    rejoin: str | None = None
    """How the old primary came back (see :func:`rejoin`), or None when not asked to."""
    warnings: list[str] = field(default_factory=list)


def promote(cluster: LocalCluster, replica: str, *, progress: Progress = lambda _: None,
            drain_timeout: float = 5.0, rejoin_old: bool = True) -> PromoteReport:
    """Make ``replica`` the primary (see the module docstring for the steps)."""
    new = cluster.node_named(replica)
    old = cluster.primary
    if replica == old.name:
        raise ConfigurationError(f"{replica} is the primary already; promote one of the "
                                 f"replicas: {', '.join(cluster.state.replicas) or 'none'}")
    if _in_recovery(cluster, replica) is not True:
        raise ConfigurationError(
            f"{replica} is not a running replica; start it first (`sagaz dev up`, or "
            f"`sagaz ha rejoin {replica}`)")
    report = PromoteReport(old.name, replica, 0.0)
    started = time.monotonic()
    pause = _Pause(cluster)
    progress(f"pausing pgbouncer-rw: new transactions wait; running ones have up to "
             f"{drain_timeout:g} s to finish")
    pause.start()
    try:
        if not pause.done.wait(drain_timeout):
            report.warnings.append(f"transactions still running after {drain_timeout:g} s were "
                                   "rolled back by the stop of the old primary")
        if old.running:
            progress(f"stopping the old primary {old.name} (fast)")
            old.stop("fast")
        else:
            progress(f"the old primary {old.name} is not running")
        pause.done.wait(5.0)
        progress(f"promoting {replica} (pg_ctl promote)")
        new.promote()
        _wait(lambda: _in_recovery(cluster, replica) is False, 30.0,
              f"{replica} did not accept writes after its promotion; see {new.log_path}")
        cluster.state.primary = replica
        cluster.save()
        progress(f"pointing pgbouncer-rw at {replica} ({new.host}:{new.port}), RELOAD, RESUME")
        bouncer = cluster.bouncer("rw")
        bouncer.write_config()
        _admin(cluster, "RELOAD", f"RESUME {cluster.state.dbname}")
    except BaseException:
        # Never leave the write pool paused: its clients would wait for nothing.
        with contextlib.suppress(SagazError):
            _admin(cluster, f"RESUME {cluster.state.dbname}")
        raise
    finally:
        pause.close()
    _wait(lambda: _pool_writes(cluster), 30.0,
          f"pgbouncer-rw does not reach the new primary; see {bouncer.log_path}")
    report.write_downtime = time.monotonic() - started
    logger.info("promoted %s; write pool unavailable for %.3f s", replica,
                report.write_downtime,
                extra={"action": "promoted", "node": replica, "old_primary": old.name,
                       "downtime": report.write_downtime})

    # The new primary's own standby settings are history now.
    new.set_auto_conf({"primary_conninfo": None, "primary_slot_name": None})
    new.reload()
    _sql(cluster, replica, "CHECKPOINT")  # pg_rewind reads the new timeline from pg_control
    for name in cluster.state.replicas:
        _ensure_slot(cluster, name)
    for name in cluster.state.replicas:
        if name == old.name:
            continue
        node = cluster.node(name)
        progress(f"re-pointing replica {name} to {replica}")
        _configure_standby(cluster, node)
        if node.running:
            node.reload()
            if not _streams(cluster, name, _QUICK_STREAM_TIMEOUT):
                report.warnings.append(f"{name} does not stream from {replica}: run "
                                       f"`sagaz ha rejoin {name}`")
    if rejoin_old:
        report.rejoin = rejoin(cluster, old.name, progress=progress)
    elif old.exists:
        # Left stopped, it must never start as a second primary (`sagaz dev up` starts every
        # node): it starts as a standby, and `sagaz ha rejoin` rewinds it if it diverged.
        _configure_standby(cluster, old)
    refresh_read_pool(cluster)
    return report


def rejoin(cluster: LocalCluster, name: str, *, progress: Progress = lambda _: None) -> str:
    """Make ``name`` a streaming replica of the current primary. Returns what it took:
    ``streaming`` (nothing), ``re-pointed``, ``restarted``, ``pg_rewind`` or ``pg_basebackup``."""
    node = cluster.node_named(name)
    primary = cluster.primary
    if name == primary.name:
        raise ConfigurationError(
            f"{name} is the primary; to make it a replica, promote another node first "
            f"(`sagaz ha promote {(cluster.state.replicas or ['REPLICA'])[0]}`)")
    _require_primary(cluster)
    if cluster.slot_status(name) == "lost":
        progress(f"{name} fell more than max_slot_wal_keep_size "
                 f"({cluster.state.max_slot_wal_keep_size}) behind: its slot was lost")
        return rebuild(cluster, name, progress=progress)
    _ensure_slot(cluster, name)
    if not node.exists:
        return _clone(cluster, node, progress)
    if node.running:
        recovering = _in_recovery(cluster, name)
        if recovering and _streams(cluster, name, 0):
            progress(f"{name} already streams from {primary.name}")
            return "streaming"
        if recovering:
            progress(f"re-pointing {name} to {primary.name}")
            _configure_standby(cluster, node)
            node.reload()
            if _streams(cluster, name, _QUICK_STREAM_TIMEOUT, node):
                return "re-pointed"
        progress(f"stopping {name}" + ("" if recovering else
                                       " (it runs as a primary: its history diverged)"))
        node.stop("fast")
    elif node.is_standby:
        progress(f"starting {name} as a replica of {primary.name}")
        _configure_standby(cluster, node)
        node.write_settings()
        node.start()
        if _streams(cluster, name, _QUICK_STREAM_TIMEOUT, node):
            return "restarted"
        progress(f"{name} cannot follow {primary.name}'s history; stopping it to rewind")
        node.stop("fast")
    progress(f"pg_rewind {name} onto {primary.name}")
    try:
        node.rewind(primary, SUPERUSER, cluster.passwords[SUPERUSER])
    except SagazError as exc:
        why = str(exc).splitlines()[0]
        progress(f"pg_rewind failed ({why}); cloning {name} again")
        node.purge()
        return _clone(cluster, node, progress)
    _configure_standby(cluster, node)
    progress(f"starting {name} as a replica of {primary.name}")
    node.start()
    if not _streams(cluster, name, STREAM_TIMEOUT, node):
        raise SagazError(f"{name} does not stream from {primary.name} after pg_rewind; see "
                         f"{node.log_path}")
    return "pg_rewind"


def rebuild(cluster: LocalCluster, name: str, *, progress: Progress = lambda _: None) -> str:
    """Make ``name`` a replica again from scratch: stop it, replace its slot on the primary with a
    new one and its data with a fresh pg_basebackup. For a replica whose slot was lost; returns
    ``pg_basebackup``."""
    node = cluster.node_named(name)
    if name == cluster.state.primary:
        raise ConfigurationError(f"{name} is the primary; only a replica can be rebuilt")
    _require_primary(cluster)
    if node.running:
        progress(f"stopping {name}")
        node.stop("fast")
    progress(f"replacing the replication slot {name} on {cluster.state.primary}")
    cluster.drop_slot(name)
    _ensure_slot(cluster, name)
    node.purge()
    return _clone(cluster, node, progress)


# -- steps -----------------------------------------------------------------------------------------


def _require_primary(cluster: LocalCluster) -> None:
    primary = cluster.state.primary
    if _in_recovery(cluster, primary) is not False:
        raise SagazError(f"the primary {primary} is not running (or not a primary); "
                         "start the cluster with `sagaz dev up` first")


def _clone(cluster: LocalCluster, node: PostgresNode, progress: Progress) -> str:
    progress(f"pg_basebackup {node.name} from {cluster.state.primary}")
    node.init_replica(cluster.primary, REPLICATION_USER, cluster.passwords[REPLICATION_USER],
                      slot=node.name, create_slot=False)
    progress(f"starting {node.name} as a replica of {cluster.state.primary}")
    node.start()
    if not _streams(cluster, node.name, STREAM_TIMEOUT, node):
        raise SagazError(f"{node.name} does not stream from {cluster.state.primary} after "
                         f"pg_basebackup; see {node.log_path}")
    return "pg_basebackup"


def _configure_standby(cluster: LocalCluster, node: PostgresNode) -> None:
    node.configure_standby(cluster.primary, REPLICATION_USER,
                           cluster.passwords[REPLICATION_USER], slot=node.name)


def _ensure_slot(cluster: LocalCluster, name: str) -> None:
    """A physical slot for ``name`` on the primary, reserving WAL from now on."""
    _sql(cluster, cluster.state.primary,
         "SELECT pg_create_physical_replication_slot(%(slot)s, true) WHERE NOT EXISTS "
         "(SELECT FROM pg_replication_slots WHERE slot_name = %(slot)s)", {"slot": name})


def _streams(cluster: LocalCluster, name: str, timeout: float,
             node: PostgresNode | None = None) -> bool:
    """Whether ``name`` streams from the primary within ``timeout`` seconds. Gives up early
    when ``node``'s log says its history diverged from the primary's."""
    log_start = node.log_path.stat().st_size if node and node.log_path.exists() else 0
    deadline = time.monotonic() + timeout
    while True:
        rows = _sql(cluster, cluster.state.primary,
                    "SELECT state FROM pg_stat_replication WHERE application_name = %(name)s",
                    {"name": name})
        if ("streaming",) in rows:
            return True
        if time.monotonic() >= deadline or (node and _diverged(node, log_start)):
            return False
        time.sleep(0.1)


def _diverged(node: PostgresNode, offset: int) -> bool:
    try:
        with node.log_path.open(errors="replace") as log:
            log.seek(offset)
            text = log.read()
    except OSError:
        return False
    return any(marker in text for marker in _DIVERGED)


def _in_recovery(cluster: LocalCluster, name: str) -> bool | None:
    """pg_is_in_recovery() of a node; None when it does not answer."""
    if not cluster.node(name).running:
        return None
    try:
        rows = _sql(cluster, name, "SELECT pg_is_in_recovery()")
    except SagazError:
        return None
    return bool(rows[0][0])


def _pool_writes(cluster: LocalCluster) -> bool:
    """Whether pgbouncer-rw serves a transaction on a primary."""
    try:
        with psycopg.connect(cluster.dsn(port=cluster.state.rw_port), autocommit=True,
                             connect_timeout=CONNECT_TIMEOUT, prepare_threshold=None) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    except psycopg.Error:
        return False
    return row == (False,)


def _sql(cluster: LocalCluster, name: str, query: str,
         params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """Run one statement on node ``name`` as the superuser; its rows (none for a command)."""
    try:
        with psycopg.connect(cluster.node_dsn(name), autocommit=True,
                             connect_timeout=CONNECT_TIMEOUT) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []
    except psycopg.Error as exc:
        raise SagazError(f"on {name}: {' '.join(str(exc).split())}") from exc


def _admin(cluster: LocalCluster, *commands: str) -> None:
    """Commands on pgbouncer-rw's admin console (a database not paused answers RESUME with an
    error, which is fine: it serves)."""
    try:
        with psycopg.connect(cluster.admin_dsn("rw"), autocommit=True,
                             connect_timeout=CONNECT_TIMEOUT, prepare_threshold=None) as conn:
            for command in commands:
                try:
                    conn.execute(command)
                except psycopg.errors.ProtocolViolation:
                    if not command.startswith("RESUME"):
                        raise
    except psycopg.Error as exc:
        raise SagazError(f"pgbouncer-rw admin console: {' '.join(str(exc).split())}") from exc


def _wait(check: Callable[[], bool], timeout: float, failure: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SagazError(failure)
        time.sleep(0.05)


class _Pause:
    """``PAUSE db`` on pgbouncer-rw in a thread: the command returns only once every server
    connection is released, which a stuck transaction may delay until the old primary stops."""

    def __init__(self, cluster: LocalCluster):
        self.cluster = cluster
        self.done = threading.Event()
        self.conn: psycopg.Connection[Any] | None = None
        self.thread = threading.Thread(target=self._run, name="pgbouncer-pause", daemon=True)

    def start(self) -> None:
        try:
            self.conn = psycopg.connect(self.cluster.admin_dsn("rw"), autocommit=True,
                                        connect_timeout=CONNECT_TIMEOUT, prepare_threshold=None)
        except psycopg.Error as exc:
            # PgBouncer down: nothing to hold; the promotion itself must still happen.
            logger.warning("cannot PAUSE pgbouncer-rw: %s", exc,
                           extra={"action": "pause_failed"})
            self.done.set()
            return
        self.thread.start()

    def _run(self) -> None:
        assert self.conn is not None
        try:
            self.conn.execute(f"PAUSE {self.cluster.state.dbname}")
        except psycopg.Error as exc:
            logger.warning("PAUSE on pgbouncer-rw failed: %s", exc,
                           extra={"action": "pause_failed"})
        finally:
            self.done.set()

    def close(self) -> None:
        if self.thread.is_alive():
            self.thread.join(5.0)
        if self.conn is not None:
            self.conn.close()
