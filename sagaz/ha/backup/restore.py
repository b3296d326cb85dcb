"""Restores: a backup plus archived WAL into a NEW data directory, to a point in time, an LSN,
or the end of the archive, and optionally started on a free loopback port; the restore drill.

A restored server never archives (``archive_mode = off``): its history forks from the
cluster's, and its WAL must not mix with the cluster's in the repository. It listens on
127.0.0.1 only, on a port of its own, with its own socket directory, and keeps the cluster's
roles and passwords (it is a copy of the cluster). ``DIR/restored.json`` records it, so that
``sagaz backup stop-restored DIR`` finds it.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sagaz.errors import ConfigurationError
from sagaz.ha.addresses import kernel_chosen_port
from sagaz.ha.backup.archive import check_archive, primary_archiver
from sagaz.ha.backup.repo import BackupError, BackupRepository
from sagaz.ha.local import APP_USER, PRIMARY_SETTINGS, SUPERUSER, LocalCluster
from sagaz.ha.osuser import check_reachable, service_user
from sagaz.ha.postgres import PostgresNode
from sagaz.tls import TlsFiles

__all__ = ["RestoreResult", "RestoreTarget", "require_whole_archive", "restore", "restore_data",
           "restored_node", "start_restored", "stop_restored"]

Progress = Callable[[str], None]

_LSN = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")
RECORD = "restored.json"


@dataclass(frozen=True)
class RestoreTarget:
    kind: str
    """``latest``, ``time`` or ``lsn``."""
    value: str | None = None

    @classmethod
    def parse(cls, text: str) -> RestoreTarget:
        """``latest``, an LSN (``0/5000050``) or a time with its offset (ISO 8601)."""
        if text == "latest":
            return cls("latest")
        if _LSN.match(text):
            return cls("lsn", text.upper())
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigurationError(
                f"--to {text!r} is neither `latest`, an LSN (e.g. 0/5000050) nor a time (ISO "
                "8601 with an offset, e.g. 2026-01-31T12:00:00+00:00)") from None
        if moment.tzinfo is None:
            raise ConfigurationError(
                f"--to {text!r} has no time zone offset: add one (e.g. +00:00 or Z), so that "
                "it names one moment whatever the machine's time zone")
        return cls("time", moment.isoformat(sep=" "))

    def __str__(self) -> str:
        return self.value or self.kind

    def pgbackrest_options(self) -> list[str]:
        if self.kind == "latest":
            return ["--type=default"]
        return [f"--type={self.kind}", f"--target={self.value}", "--target-action=promote"]


@dataclass
class RestoreResult:
    directory: str
    target: str
    backup: str
    seconds: float
    url: str | None = None
    restored_lsn: str | None = None
    port: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def restored_node(directory: Path, port: int, cluster: Path,
                  cluster_name: str = "restored") -> PostgresNode:
    """The server restored into ``directory``: it serves TLS with the certificates of the
    cluster in ``cluster`` (their SANs include 127.0.0.1, where it listens)."""
    settings = {**PRIMARY_SETTINGS, "archive_mode": "off", "cluster_name": f"'{cluster_name}'"}
    return PostgresNode("restored", directory, port, host="127.0.0.1", settings=settings,
                        tls=TlsFiles(cluster / "tls"))


def restore(cluster: LocalCluster, into: Path, target: RestoreTarget, *, start: bool = False,
            progress: Progress = lambda _: None, timeout: float = 600.0,
            backup_set: str | None = None) -> RestoreResult:
    """Restore into ``into`` (absent or empty); with ``start``, start it and wait until the
    target is reached and it accepts writes."""
    repo = BackupRepository(cluster)
    repo.require_enabled()
    into = into.absolute()
    _require_new_directory(cluster, into)
    require_whole_archive(repo, progress)
    started = time.monotonic()
    into.mkdir(parents=True, exist_ok=True)
    check_reachable(service_user(), into)
    into.chmod(0o700)
    service_user().own(into)
    node = restored_node(into, kernel_chosen_port(), cluster.directory)
    label = restore_data(repo, node, target, backup_set, progress)
    result = RestoreResult(str(into), str(target), label, time.monotonic() - started)
    _write_record(into, {"port": node.port, "cluster": str(cluster.directory),
                         "target": str(target), "backup": result.backup})
    if start:
        progress(f"starting it on 127.0.0.1:{node.port}; replaying WAL to {target}")
        try:
            start_restored(cluster, node, timeout)
            result.restored_lsn = _replayed_lsn(cluster, node)
        except BaseException:
            # A server still recovering (timeout) or half started must not outlive the command
            # that could not deliver it: nobody would know to stop it.
            with contextlib.suppress(Exception):
                node.stop("immediate")
            raise
        result.port = node.port
        result.url = (f"postgresql://{APP_USER}@127.0.0.1:{node.port}/{cluster.state.dbname}")
        result.seconds = time.monotonic() - started
    return result


def require_whole_archive(repo: BackupRepository, progress: Progress) -> None:
    """Refuse a restore the archive cannot complete: no backup, a missing or corrupt segment
    (PostgreSQL would take the hole as the end of the archive and stop there without a word)."""
    progress("checking the WAL archive (continuity, pgbackrest verify)")
    report = check_archive(repo, primary=primary_archiver(repo))
    holes = [p for p in report.problems if "missing" in p or "corrupt" in p or "no backup" in p]
    if holes:
        raise BackupError(f"not restoring: {holes[0]}")


def restore_data(repo: BackupRepository, node: PostgresNode, target: RestoreTarget,
                 backup_set: str | None, progress: Progress) -> str:
    """``pgbackrest restore`` into ``node``'s (absent or empty) data directory, set up to
    recover to ``target`` and promote there on its next start, with ``node``'s own settings;
    the label of the backup restored."""
    chosen = backup_set or _backup_for(repo, target)
    backups = repo.info().backups
    label = chosen or (backups[-1].label if backups and target.kind == "latest" else None)
    progress(f"pgbackrest restore {chosen or 'latest backup'} into {node.datadir} "
             f"(to {target})")
    repo.run(f"--pg1-path={node.datadir}", "--target-timeline=latest",
             *(["--set=" + chosen] if chosen else []), *target.pgbackrest_options(), "restore",
             what="pgbackrest restore")
    # A backup taken from a standby carries its standby settings and slots: history here.
    node.set_auto_conf({"primary_conninfo": None, "primary_slot_name": None})
    node.drop_local_slots()
    (node.datadir / "standby.signal").unlink(missing_ok=True)
    node.write_settings()
    return label or "chosen by pgBackRest"


def start_restored(cluster: LocalCluster, node: PostgresNode, timeout: float) -> None:
    """Start it and wait until recovery is over and it was promoted; a server that stops on
    the way (target not reached, WAL unreadable) is reported with its log's reason."""
    try:
        node.start(timeout=timeout)
    except BackupError:
        raise
    except Exception as exc:
        raise BackupError(f"the restored server did not start: {_fatal(node) or exc}") from exc
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not node.running:
            raise BackupError(f"the restored server stopped during recovery: "
                              f"{_fatal(node) or 'see ' + str(node.log_path)}")
        if _query(cluster, node, "SELECT NOT pg_is_in_recovery()") is True:
            return
        time.sleep(0.2)
    raise BackupError(f"the restored server was still recovering after {timeout:g} s; see "
                      f"{node.log_path}")


def stop_restored(directory: Path) -> bool:
    """Stop the server restored into ``directory``; False when it was not running."""
    record = read_record(directory)
    node = restored_node(directory.absolute(), int(record["port"]), Path(record["cluster"]))
    was_running = node.running
    node.stop("fast")
    return was_running


def read_record(directory: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((directory / RECORD).read_text())
    except (OSError, ValueError):
        raise ConfigurationError(
            f"{directory} holds no restored server (no {RECORD}): name a directory "
            "`sagaz backup restore --into` made") from None
    return data


def _write_record(directory: Path, record: dict[str, Any]) -> None:
    path = directory / RECORD
    path.write_text(json.dumps(record, indent=2))
    service_user().own(path)


def _require_new_directory(cluster: LocalCluster, into: Path) -> None:
    if into.exists() and (not into.is_dir() or any(into.iterdir())):
        raise ConfigurationError(
            f"--into {into} is not empty: restore into a new or empty directory (a restore "
            "never overwrites a data directory, least of all a running node's)")
    if into == cluster.directory or cluster.directory in into.parents:
        raise ConfigurationError(
            f"--into {into} is inside the cluster directory {cluster.directory}: choose a "
            "directory outside it")


def _backup_for(repo: BackupRepository, target: RestoreTarget) -> str | None:
    """The newest backup that ended before an LSN target (pgBackRest picks it by itself for a
    time target, and takes the newest backup for `latest`)."""
    if target.kind != "lsn":
        return None
    assert target.value is not None
    wanted = _lsn_int(target.value)
    fitting = [b for b in repo.info().backups if _lsn_int(b.lsn_stop) <= wanted]
    if not fitting:
        raise ConfigurationError(f"--to {target.value}: no backup ends before that LSN (the "
                                 "oldest backup's range is in `sagaz backup list`)")
    return fitting[-1].label


def _lsn_int(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def _query(cluster: LocalCluster, node: PostgresNode, sql: str) -> Any:
    import psycopg

    try:
        with psycopg.connect(host=node.host, port=node.port, user=SUPERUSER,
                             password=cluster.passwords[SUPERUSER], dbname="postgres",
                             connect_timeout=5, autocommit=True) as conn:
            row = conn.execute(sql).fetchone()
    except psycopg.Error:
        return None
    return row[0] if row else None


def _replayed_lsn(cluster: LocalCluster, node: PostgresNode) -> str | None:
    lsn = _query(cluster, node, "SELECT coalesce(pg_last_wal_replay_lsn(), "
                                "pg_current_wal_lsn())::text")
    return str(lsn) if lsn else None


def _fatal(node: PostgresNode) -> str | None:
    """The last FATAL or PANIC line of the server's log, without its prefix."""
    if not node.log_path.exists():
        return None
    lines = [line for line in node.log_path.read_text(errors="replace").splitlines()
             if "FATAL:" in line or "PANIC:" in line]
    if not lines:
        return None
    level = "FATAL:" if "FATAL:" in lines[-1] else "PANIC:"
    return " ".join(lines[-1].split(level, 1)[1].split())
