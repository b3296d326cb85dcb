"""Keep pgbouncer-ro serving while replicas die and come back.

PgBouncer 1.18 balances a database over a host list (``host=127.0.0.2,127.0.0.3``): each new
server connection goes to the next host, round-robin. It does not skip a host that is down: a
dead replica fails every other login, and clients of the read pool see errors for as long as it
stays in the list. The supervisor takes it out. Once per interval (1 s) it probes every node
(connect, ``SELECT pg_is_in_recovery()``, a 1 s budget); when the set of healthy replicas changed,
it rewrites the [databases] host list of pgbouncer-ro to the healthy ones, or to the primary when
there is none, and RELOADs PgBouncer. A replica that answers again is put back the same way.

Why this and not something else:

* **HAProxy** in front of the replicas with a health check would do the same job, and is what a
  production deployment may prefer; locally it is one more daemon to install, configure and keep
  alive, and a second hop for every read. The supervisor reuses the one PgBouncer and the same
  pgbouncer.ini template as the deployments.
* **Client-side balancing** (libpq ``load_balance_hosts=random`` with a multi-host DSN and
  ``target_session_attrs=standby``) skips dead hosts by itself, but arrived in libpq 16; the
  machines here have libpq 15, and it would bypass the pool (every client connects to the servers
  itself).
* **PgBouncer's own checks** do not cover it. ``server_check_query`` (default ``select 1``) runs
  on a server connection that was idle longer than ``server_check_delay`` before it is handed to
  a client: it catches connections a restart broke (the template sets the delay to 10 s; 0 would
  check every reuse, at a round trip each), but it never steers new logins away from a dead host,
  so it complements the supervisor rather than replacing it.

Health is "accepts a login and is in recovery". Lag is not part of it: a lagging replica still
serves, and reads that must see a write wait for its LSN (analytics read-your-writes). During a
promotion the node being promoted stops being a replica; with no replica left, the read pool
points at whichever node answers as a primary, so reads keep working while the old primary is
rebuilt. The supervisor reads cluster.json on every pass (promotions change it) and compares with
the host list in pgbouncer.ini itself, so a restart or another writer of that file (``dev up``)
never leaves it stale. It exits when the cluster directory disappears (``dev down --purge``).

It also rebuilds a replica whose replication slot the primary gave up (``wal_status = 'lost'``:
it fell further behind than ``max_slot_wal_keep_size``, see :mod:`sagaz.ha.wal_settings`), with a
fresh base backup and a new slot, in the background so the read pool keeps being reconciled
meanwhile (:mod:`sagaz.ha.slots`).

In a cluster with automatic failover (``dev up --ha --failover``) Patroni decides the roles and
clones or rewinds replicas itself; the supervisor is then the one place that points the pools at
what Patroni decided: pgbouncer-rw at the leader, pgbouncer-ro at the replicas that stream, from
the members' REST API (:meth:`sagaz.ha.patroni_cluster.PatroniCluster.follow`, with the logic
:mod:`sagaz.deploy.patroni_follow` shares with docker-compose). It also starts again an etcd
member or a Patroni that died, a few seconds later (:meth:`~sagaz.ha.patroni_cluster.
PatroniCluster.revive`), as a service manager would.

With monitoring on (``sagaz dev up --monitoring``) it also starts again Prometheus or an
exporter that died (:mod:`sagaz.ha.monitoring`).

It runs as ``sagaz dev supervise --dir D`` (started in the background by ``sagaz dev up``, pid in
``D/supervisor.pid``, log in ``D/supervisor.log``, stopped by ``sagaz dev down``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sagaz.errors import SagazError
from sagaz.ha.dirlock import DirectoryBusy, directory_lock, locked_by_a_command
from sagaz.ha.local import LocalCluster
from sagaz.ha.monitoring import LocalMonitoring
from sagaz.ha.osuser import process_alive, terminate
from sagaz.ha.readpool import (
    CHECK_TIMEOUT,
    Probe,
    ReadPoolChange,
    probe_nodes,
    read_pool_targets,
    reconcile_read_pool,
    refresh_read_pool,
)
from sagaz.ha.slots import LostSlotHealer
from sagaz.private_files import open_private_append, write_private_file

__all__ = [
    "CHECK_TIMEOUT", "DEFAULT_INTERVAL", "Probe", "ReadPoolChange", "probe_nodes",
    "read_pool_targets", "reconcile_read_pool", "refresh_read_pool", "run_supervisor",
    "start_supervisor", "stop_supervisor", "supervisor_pid",
]

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL = 1.0
"""Seconds between two passes."""


# -- the background process ------------------------------------------------------------------------


async def supervise(directory: Path, interval: float = DEFAULT_INTERVAL,
                    stop: asyncio.Event | None = None) -> None:
    """Reconcile the read pool, and rebuild replicas whose slot was lost, every ``interval``
    seconds until ``stop`` is set or the cluster directory is gone."""
    stop = stop or asyncio.Event()
    healer = LostSlotHealer()
    logger.info("supervising %s every %g s", directory, interval,
                extra={"action": "supervisor_started", "directory": str(directory)})
    try:
        while not stop.is_set():
            started = time.monotonic()
            if not (directory / "cluster.json").exists():
                logger.info("%s is gone; stopping", directory,
                            extra={"action": "supervisor_cluster_gone"})
                return
            if locked_by_a_command(directory):
                # `dev rotate-secrets`, `ha promote`... are changing passwords or nodes: probing
                # with what the files said a moment ago could take healthy replicas out.
                logger.debug("%s is locked by a command; skipping this pass", directory,
                             extra={"action": "supervisor_pass_skipped"})
                await _pause(stop, interval, started)
                continue
            try:
                cluster = LocalCluster.load(directory)
                if cluster.state.patroni is not None:
                    # Patroni decides the roles (and rebuilds replicas); the pools follow it.
                    await asyncio.to_thread(_follow_patroni, cluster)
                else:
                    await reconcile_read_pool(cluster)
                    await healer.check(cluster)
                if cluster.state.monitoring:
                    await asyncio.to_thread(_restart_dead_monitoring, directory)
            except (SagazError, OSError, ValueError) as exc:
                # One bad pass (a file being rewritten, PgBouncer restarting) must not end the
                # supervision: the next pass tries again.
                logger.warning("supervisor pass failed: %s", exc,
                               extra={"action": "supervisor_pass_failed"})
            await _pause(stop, interval, started)
    finally:
        await healer.close()


_dead_since: dict[str, float] = {}
"""Since when each daemon of a failover cluster has been found dead (PatroniCluster.revive)."""


def _follow_patroni(cluster: LocalCluster) -> None:
    from sagaz.ha.patroni_cluster import PatroniCluster

    failover = PatroniCluster(cluster)
    failover.revive(_dead_since)
    failover.follow()


def _restart_dead_monitoring(directory: Path) -> None:
    """Start again Prometheus or an exporter that died (its own log says why it stopped). Under
    the directory lock, with cluster.json read again: a `dev up --no-monitoring` or `dev down`
    that began since this pass started is not undone."""
    try:
        with directory_lock(directory, wait=False):
            cluster = LocalCluster.load(directory)
            if cluster.state.monitoring:
                LocalMonitoring(cluster).restart_dead()
    except DirectoryBusy:
        pass  # a command runs: the next pass looks again


async def _pause(stop: asyncio.Event, interval: float, started: float) -> None:
    """Until the next pass is due (``interval`` after ``started``) or ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, interval - (time.monotonic() - started)))


def run_supervisor(directory: Path, interval: float = DEFAULT_INTERVAL) -> None:
    """The foreground process: claim the pid file, supervise until SIGTERM/SIGINT."""
    directory = directory.absolute()
    cluster = LocalCluster.load(directory)
    other = supervisor_pid(cluster)
    if other is not None and other != os.getpid():
        raise SagazError(f"{directory} is already supervised by process {other}")
    pid_path = cluster.supervisor_pid_path
    write_private_file(pid_path, f"{os.getpid()}\n")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await supervise(directory, interval, stop)

    try:
        asyncio.run(main())
    finally:
        with contextlib.suppress(OSError):
            if pid_path.read_text().strip() == str(os.getpid()):
                pid_path.unlink()


def start_supervisor(cluster: LocalCluster, interval: float = DEFAULT_INTERVAL) -> int:
    """Start ``sagaz dev supervise`` detached (own session, output to supervisor.log) unless one
    runs already; return its pid."""
    running = supervisor_pid(cluster)
    if running is not None:
        return running
    with os.fdopen(open_private_append(cluster.directory / "supervisor.log"), "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sagaz", "--log-level", "INFO", "dev", "supervise",
             "--dir", str(cluster.directory), "--interval", f"{interval:g}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            cwd=cluster.directory)
    # Written here too, so that `down` right after `up` finds it before the child is running.
    write_private_file(cluster.supervisor_pid_path, f"{process.pid}\n")
    _children.append(process)
    return process.pid


# Popen objects of supervisors this process started: kept so Python neither warns about a child
# still running nor loses the chance to reap it.
_children: list[subprocess.Popen[bytes]] = []


def supervisor_pid(cluster: LocalCluster) -> int | None:
    """The pid of the cluster's running supervisor, if any (a stale pid file does not count)."""
    try:
        pid = int(cluster.supervisor_pid_path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_supervisor(pid) else None


def stop_supervisor(cluster: LocalCluster, timeout: float = 5.0) -> bool:
    """SIGTERM the supervisor and wait for it; True when one was running."""
    pid = supervisor_pid(cluster)
    if pid is None:
        cluster.supervisor_pid_path.unlink(missing_ok=True)
        return False
    terminate(pid, _is_supervisor, timeout, poll=0.02)
    cluster.supervisor_pid_path.unlink(missing_ok=True)
    _children[:] = [p for p in _children if p.poll() is None]
    return True


def _is_supervisor(pid: int) -> bool:
    """Whether ``pid`` is alive and a supervisor (a reused pid of another program is not)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False  # our child, now reaped
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return process_alive(pid)  # no /proc (macOS): trust the pid file
    return b"supervise" in cmdline and b"dev" in cmdline
