"""The restore drill (``sagaz backup verify``): restore the latest backup plus all archived WAL
into a scratch directory, start it, check what it holds, report, delete it.

A backup nobody restored is a hope, not a backup: the drill proves the repository restores, how
long that takes (the RTO's largest part) and how old the newest restored data is (the RPO of a
total loss at this moment, when the cluster is under load).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sagaz.errors import SagazError
from sagaz.ha.backup.repo import BackupError
from sagaz.ha.backup.restore import RestoreTarget, read_record, restore, restored_node
from sagaz.ha.local import APP_USER, LocalCluster

__all__ = ["DrillReport", "restore_drill"]

Progress = Callable[[str], None]


@dataclass
class DrillReport:
    backup: str
    restore_seconds: float
    """From the start of ``pgbackrest restore`` to the restored server accepting writes."""
    data_age_seconds: float | None
    """Now minus the newest saga update in the restored database."""
    row_counts: dict[str, int] = field(default_factory=dict)
    partitions: dict[str, int] = field(default_factory=dict)
    maintenance_actions: int = 0
    """What maintain_all_partitions() would do now (run and rolled back)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def restore_drill(cluster: LocalCluster, *, parent: Path | None = None,
                  progress: Progress = lambda _: None,
                  now: Callable[[], float] = time.time) -> DrillReport:
    scratch = Path(tempfile.mkdtemp(prefix="sagaz-restore-drill-", dir=parent))
    scratch.chmod(0o755)  # the servers' OS user must reach the node directory inside
    try:
        result = restore(cluster, scratch / "node", RestoreTarget("latest"), start=True,
                         progress=progress)
        assert result.port is not None
        progress("checking the saga tables and partition maintenance")
        report = _inspect(cluster, result.port, now)
        report.backup = result.backup
        report.restore_seconds = result.seconds
        return report
    finally:
        progress("deleting the scratch node")
        node_dir = scratch / "node"
        if (node_dir / "restored.json").exists():
            with contextlib.suppress(SagazError, ValueError, KeyError):
                record = read_record(node_dir)
                restored_node(node_dir, int(record["port"]), cluster.directory).stop("immediate")
        shutil.rmtree(scratch, ignore_errors=True)


def _inspect(cluster: LocalCluster, port: int, now: Callable[[], float]) -> DrillReport:
    import psycopg

    from sagaz.storage.postgresql.maintenance import partition_statistics
    from sagaz.storage.sql import queries

    named = queries("postgresql")
    dsn = psycopg.conninfo.make_conninfo(
        "", host="127.0.0.1", port=port, user=APP_USER, password=cluster.passwords[APP_USER],
        dbname=cluster.state.dbname, connect_timeout=5)
    try:
        with psycopg.connect(dsn) as conn:
            counts = {str(t): int(n) for t, n in
                      conn.execute(named["restore_drill_counts"]).fetchall()}
            newest = conn.execute(named["restore_drill_newest_saga"]).fetchone()
            actions = conn.execute(named["maintain_partitions"], {"table": None}).fetchall()
            conn.rollback()  # a dry run: the drill changes nothing it then deletes anyway
    except psycopg.Error as exc:
        raise BackupError(f"the restored database failed its checks: "
                          f"{' '.join(str(exc).split())}") from exc
    partitions: dict[str, int] = {}
    for stat in partition_statistics(dsn):
        partitions[stat.table_name] = partitions.get(stat.table_name, 0) + 1
    age = None if not newest or newest[0] is None else max(0.0, now() - float(newest[0]))
    return DrillReport("", 0.0, age, counts, partitions, len(actions))
