"""Restore a whole local cluster from its repository (``sagaz dev restore --to ...``): the
primary's data goes back to a point in time, the replicas are cloned again from it, and the
pools serve the restored database. In order::

    1. while the primary runs, switch its WAL segment and wait until it is archived (what was
       committed up to now is in the repository: a target in the current segment is reachable)
    2. stop the supervisor, both pools and every server (fast)
    3. move the primary's data directory aside; pgbackrest restore into its place, with
       recovery_target_time|lsn and recovery_target_action=promote (the same restore as
       ``sagaz backup restore``)
    4. start it: it replays the archived WAL to the target and promotes on a new timeline; its
       archive_command is on, so that timeline is archived from its first segment
    5. delete the moved-aside data; remove the recovery settings pgBackRest wrote (a replica
       cloned from this primary copies postgresql.auto.conf: with recovery_target_time a
       standby would stop replaying at the target and promote itself)
    6. rebuild every replica from the new primary (new slot, pg_basebackup; it streams)
    7. start both pools (pgbouncer-rw on the primary, pgbouncer-ro on the replicas) and the
       supervisor if it ran; pgbackrest check: a WAL switch on the new timeline reaches the
       repository

The repository keeps the old timeline's WAL and the backups: a later restore may still reach a
point before this one, or (``--to`` an LSN/time of the old timeline) the history this restore
discarded.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sagaz.errors import SagazError
from sagaz.ha.backup.archive import archived_segments
from sagaz.ha.backup.repo import BackupError, BackupRepository
from sagaz.ha.backup.restore import (
    RestoreTarget,
    require_whole_archive,
    restore_data,
    start_restored,
)
from sagaz.ha.failover import rebuild
from sagaz.ha.local import LocalCluster
from sagaz.ha.readpool import refresh_read_pool

__all__ = ["ClusterRestore", "restore_cluster"]

Progress = Callable[[str], None]

ARCHIVE_FLUSH_TIMEOUT = 60.0
"""Seconds the running primary's current WAL segment has to reach the repository (step 1)."""
_RECOVERY_SETTINGS = ("restore_command", "recovery_target", "recovery_target_time",
                      "recovery_target_lsn", "recovery_target_xid", "recovery_target_name",
                      "recovery_target_action", "recovery_target_timeline",
                      "recovery_target_inclusive")


@dataclass
class ClusterRestore:
    primary: str
    target: str
    backup: str
    restored_lsn: str | None
    replicas: list[str]
    seconds: float
    """From the stop of the cluster to both pools serving again."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def restore_cluster(cluster: LocalCluster, target: RestoreTarget, *,
                    progress: Progress = lambda _: None, timeout: float = 600.0,
                    backup_set: str | None = None) -> ClusterRestore:
    """The steps of the module docstring. The caller holds the cluster directory's lock."""
    from sagaz.ha.supervisor import start_supervisor, supervisor_pid

    repo = BackupRepository(cluster)
    repo.require_enabled()
    primary = cluster.primary
    if primary.running:
        _flush_archive(cluster, repo, progress)
    else:
        progress(f"the primary {primary.name} is not running: restoring from what the "
                 "repository holds")
    require_whole_archive(repo, progress)
    supervised = supervisor_pid(cluster) is not None
    started = time.monotonic()
    progress("stopping the cluster (supervisor, pools, servers)")
    cluster.down()
    aside = primary.directory / "data.before-restore"
    shutil.rmtree(aside, ignore_errors=True)  # of an earlier attempt that failed
    if primary.datadir.exists():
        primary.datadir.rename(aside)
    try:
        label = restore_data(repo, primary, target, backup_set, progress)
        progress(f"starting {primary.name}; replaying WAL to {target}, then promoting")
        start_restored(cluster, primary, timeout)
    except BaseException:
        # The cluster's own data comes back: a failed restore leaves it as it was (stopped).
        primary.stop("immediate")
        shutil.rmtree(primary.datadir, ignore_errors=True)
        if aside.exists():
            aside.rename(primary.datadir)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    primary.set_auto_conf(dict.fromkeys(_RECOVERY_SETTINGS))
    restored_lsn = _current_lsn(cluster)
    for name in cluster.state.replicas:
        progress(f"re-cloning {name} from {primary.name}")
        rebuild(cluster, name, progress=progress)
    repo.write_config()  # the replicas run again: backups come from a standby
    for role in ("rw", "ro"):
        progress(f"starting pgbouncer-{role}")
        cluster.bouncer(role).start()
    refresh_read_pool(cluster)
    seconds = time.monotonic() - started
    progress("pgbackrest check (the new timeline is archived)")
    repo.check()
    if supervised:
        start_supervisor(cluster)
    return ClusterRestore(primary.name, str(target), label, restored_lsn,
                          list(cluster.state.replicas), seconds)


def _flush_archive(cluster: LocalCluster, repo: BackupRepository, progress: Progress) -> None:
    """Close the primary's current WAL segment and wait until the repository has it."""
    progress("archiving the primary's current WAL segment")
    rows = _on_primary(cluster, "SELECT pg_walfile_name(pg_current_wal_lsn()), "
                                "pg_switch_wal()")
    segment = str(rows[0][0])
    deadline = time.monotonic() + ARCHIVE_FLUSH_TIMEOUT
    while segment not in archived_segments(repo.archive_path):
        if time.monotonic() > deadline:
            raise BackupError(
                f"WAL segment {segment} did not reach the repository within "
                f"{ARCHIVE_FLUSH_TIMEOUT:g} s: archiving is stuck (`sagaz backup check`; see "
                f"{repo.directory / 'log'}); not stopping the cluster")
        time.sleep(0.1)


def _current_lsn(cluster: LocalCluster) -> str | None:
    rows = _on_primary(cluster, "SELECT pg_current_wal_lsn()::text")
    return str(rows[0][0]) if rows else None


def _on_primary(cluster: LocalCluster, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    try:
        with psycopg.connect(cluster.node_dsn(cluster.state.primary), autocommit=True,
                             connect_timeout=5) as conn:
            return conn.execute(sql).fetchall()
    except psycopg.Error as exc:
        raise SagazError(f"on {cluster.state.primary}: {' '.join(str(exc).split())}") from exc

