"""Helpers for the backup tests: a local cluster with pgBackRest (``sagaz dev up --backup``),
SQL on its nodes and on restored servers, and WAL switched into the archive on demand."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from devcluster import DevCluster, dev_cluster, run_cli
from missing_service import fail_missing

from sagaz.ha.local import SUPERUSER


def require_pgbackrest() -> None:
    if shutil.which("pgbackrest") is None:
        fail_missing("the backup tests need pgBackRest (apt-get install pgbackrest)")


@contextlib.contextmanager
def backup_cluster(replicas: int = 1, *up_args: str) -> Iterator[DevCluster]:
    require_pgbackrest()
    with dev_cluster(replicas, "--no-supervise", "--backup", "--archive-timeout", "2",
                     *up_args) as dev:
        try:
            yield dev
        finally:
            _stop_restored_servers(dev)


# The servers restore_json() started (``--start``), stopped when their cluster's test ends even
# if the test failed or its own stop-restored did not work.
_RESTORED: dict[int, list[Path]] = {}


def _stop_restored_servers(dev: DevCluster) -> None:
    from sagaz.ha.backup.restore import stop_restored

    for directory in _RESTORED.pop(id(dev), []):
        with contextlib.suppress(Exception):
            stop_restored(directory)
        pidfile = directory / "data" / "postmaster.pid"
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(pidfile.read_text().split("\n", 1)[0]), signal.SIGKILL)


def on_primary(dev: DevCluster, sql: str, params: Any = None, dbname: str | None = None) -> Any:
    cluster = dev.cluster
    with psycopg.connect(cluster.node_dsn(cluster.state.primary,
                                          dbname=dbname or cluster.state.dbname),
                         autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else None


def on_restored(dev: DevCluster, port: int, sql: str, params: Any = None) -> list[Any]:
    cluster = dev.cluster
    with psycopg.connect(host="127.0.0.1", port=port, user=SUPERUSER,
                         password=cluster.passwords[SUPERUSER], dbname=cluster.state.dbname,
                         autocommit=True, connect_timeout=5) as conn:
        return conn.execute(sql, params).fetchall()


def switch_and_archive(dev: DevCluster) -> str:
    """Close the current WAL segment and wait until it is in the repository; its name."""
    cluster = dev.cluster
    import time

    from sagaz.ha.backup.archive import archived_segments
    from sagaz.ha.backup.repo import BackupRepository

    rows = on_primary(dev, "SELECT pg_walfile_name(pg_current_wal_lsn()), pg_switch_wal()")
    name = str(rows[0][0])
    archive = BackupRepository(cluster).archive_path
    deadline = time.monotonic() + 30
    while name not in archived_segments(archive):
        assert time.monotonic() < deadline, f"{name} was not archived within 30 s"
        time.sleep(0.1)
    return name


def stop_restored_server(directory: str) -> None:
    """`sagaz backup stop-restored DIR` (it takes no --dir: it needs no cluster)."""
    result = run_cli("backup", "stop-restored", directory)
    assert result.code == 0, result.out + result.err


def restore_json(dev: DevCluster, *args: str) -> dict[str, Any]:
    if "--start" in args:
        _RESTORED.setdefault(id(dev), []).append(Path(args[args.index("--into") + 1]))
    result = dev.cli("backup", "restore", "--json", *args)
    assert result.code == 0, result.out + result.err
    data: dict[str, Any] = json.loads(result.out)
    return data
