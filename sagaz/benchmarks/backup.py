"""Backups with pgBackRest on a local cluster (a primary, one streaming replica, pgbouncer-rw,
WAL archiving as ``sagaz dev up --ha --backup`` sets it up) started for the run in a temporary
directory and removed afterwards, whatever happens.

The database is filled to ``size_mb`` MiB (a scratch table of hex text, which lz4 compresses
little), a full backup is taken (from the replica), then, ``runs`` times each:

- restore: :func:`sagaz.ha.backup.restore.restore` to ``latest`` into a scratch directory, as
  ``sagaz backup restore --to latest`` does: the archive checks (continuity, ``pgbackrest
  verify``), then ``pgbackrest restore`` (the files: MiB/s of the restored data directory), then
  the start until the copy accepts writes. The same directory is then copied with ``cp -a`` and
  every copied file fsynced (pgBackRest syncs what it writes too): the physical limit of this
  disk, reported as a ratio;
- the saga write path: ``run()`` latency of 3-step no-op sagas at a fixed offered rate through
  pgbouncer-rw, with ``archive_mode = on`` (async archive-push through pgBackRest) and with the
  primary restarted with ``archive_mode = off``, in alternating order (on/off, off/on, ...) on
  the same cluster, so that neither mode always runs on the warmer or the fuller database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from sagaz.benchmarks.postgres import _latency
from sagaz.errors import ConfigurationError
from sagaz.ha.archive_settings import find_pgbackrest
from sagaz.ha.backup.repo import BackupRepository, _tree_size, enable_backups
from sagaz.ha.backup.restore import RestoreTarget, restore, restored_node, start_restored
from sagaz.ha.local import LocalCluster
from sagaz.ha.pgbouncer import find_pgbouncer
from sagaz.ha.postgres import find_bindir

__all__ = ["MIB", "MIN_SIZE_MB", "BackupBenchmark", "RestoreRun", "WriteRun", "check_arguments",
           "format_report", "main", "require_binaries", "run_backup_benchmark"]

Progress = Callable[[str], None]

MIB = 1024 * 1024
MIN_SIZE_MB = 16
"""One WAL segment: below it the backup is all overhead and the throughput means nothing."""

FILL_TABLE = "sagaz_bench_backup_fill"
_FILL_ROWS = 200_000
"""Rows per INSERT of the fill at most (about 46 MiB)."""
_ROW_BYTES = 250
"""About what one fill row takes, heap and index (192 bytes of text, headers, line pointer)."""


@dataclass
class RestoreRun:
    data_bytes: int
    """Bytes of the restored data directory."""
    check_seconds: float
    """The archive checks a restore makes first (continuity, pgbackrest verify)."""
    files_seconds: float
    """pgbackrest restore: the files of the backup into the new data directory."""
    copy_seconds: float
    """cp -a of the same directory, every file fsynced."""
    start_seconds: float
    """Start, replay to the end of the archive, promoted: accepting writes."""

    @property
    def mib_per_second(self) -> float:
        return self.data_bytes / MIB / self.files_seconds

    @property
    def copy_mib_per_second(self) -> float:
        return self.data_bytes / MIB / self.copy_seconds

    @property
    def ratio(self) -> float:
        """Restore throughput as a fraction of the plain copy's."""
        return self.mib_per_second / self.copy_mib_per_second

    @property
    def total_seconds(self) -> float:
        return self.check_seconds + self.files_seconds + self.start_seconds


@dataclass
class WriteRun:
    p50_ms: float
    p99_ms: float
    achieved_rate: float
    archived_segments: int
    """WAL segments pg_stat_archiver counted as archived during the run."""


@dataclass
class BackupBenchmark:
    size_mb: int
    database_bytes: int
    fill_seconds: float
    backup_seconds: float
    backup_repository_bytes: int
    offered_rate: float
    seconds: float
    restores: list[RestoreRun] = field(default_factory=list)
    archiving_on: list[WriteRun] = field(default_factory=list)
    archiving_off: list[WriteRun] = field(default_factory=list)


def check_arguments(size_mb: int, runs: int, rate: float, seconds: float,
                    base_port: int) -> None:
    """Each bad argument as a one-line ConfigurationError saying what to give instead."""
    if size_mb < MIN_SIZE_MB:
        raise ConfigurationError(f"--size-mb {size_mb} is too small: give at least "
                                 f"{MIN_SIZE_MB} (MiB; default 1024)")
    if not 1 <= runs <= 50:
        raise ConfigurationError(f"--runs {runs}: give 1 to 50 runs (default 3)")
    if not 0 < rate <= 100_000:
        raise ConfigurationError(f"--rate {rate:g}: give the offered sagas/s, above 0 and at "
                                 "most 100,000")
    if not 1 <= seconds <= 3600:
        raise ConfigurationError(f"--seconds {seconds:g}: give 1 to 3600 seconds per "
                                 "write-path run")
    if not 1024 <= base_port <= 64000:
        raise ConfigurationError(f"--base-port {base_port}: give 1024 to 64000 (the cluster "
                                 "takes it and the next 1001 ports)")


def require_binaries() -> None:
    """Fail at once, with what to install, when this machine cannot run the benchmark."""
    find_bindir()
    find_pgbouncer()
    find_pgbackrest()


def run_backup_benchmark(
    size_mb: int = 1024, runs: int = 3, rate: float = 1_000.0, seconds: float = 10.0,
    base_port: int = 46432, progress: Progress = lambda _: None,
) -> BackupBenchmark:
    check_arguments(size_mb, runs, rate, seconds, base_port)
    require_binaries()
    parent = Path(tempfile.mkdtemp(prefix="sagaz-bench-backup-"))
    parent.chmod(0o755)  # the servers run as an unprivileged user when we are root
    cluster = LocalCluster.new(parent / "cluster", replicas=1, base_port=base_port)
    cluster.state.backup = True  # the servers start with archiving on, as `dev up --backup`
    try:
        progress(f"starting a local cluster with backups (port {base_port})")
        cluster.up(progress)
        enable_backups(cluster, progress)
        progress(f"filling the database to {size_mb} MiB")
        started = time.monotonic()
        database_bytes = _fill(cluster, size_mb * MIB)
        fill_seconds = time.monotonic() - started
        progress(f"full backup of {database_bytes / MIB:,.0f} MiB")
        started = time.monotonic()
        backup = BackupRepository(cluster).backup("full")
        result = BackupBenchmark(size_mb, database_bytes, fill_seconds,
                                 time.monotonic() - started, backup.repository_size, rate,
                                 seconds)
        for run in range(runs):
            progress(f"restore {run + 1}/{runs}")
            result.restores.append(_restore_once(cluster, parent / f"restore-{run}"))
        for run in range(runs):
            # Alternate the order, so that neither mode always comes first.
            for archiving in (True, False) if run % 2 == 0 else (False, True):
                progress(f"write path {run + 1}/{runs}, archive_mode "
                         f"{'on' if archiving else 'off'}")
                _set_archiving(cluster, archiving)
                runs_of = result.archiving_on if archiving else result.archiving_off
                runs_of.append(_write_once(cluster, rate, seconds))
        return result
    finally:
        cluster.state.backup = True
        cluster.down()
        shutil.rmtree(parent, ignore_errors=True)


def _superuser(cluster: LocalCluster) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(cluster.node_dsn(cluster.state.primary, dbname=cluster.state.dbname),
                           autocommit=True, connect_timeout=5)


def _fill(cluster: LocalCluster, wanted: int) -> int:
    """Insert rows into a scratch table until the database holds ``wanted`` bytes; its size."""
    with _superuser(cluster) as conn:
        conn.execute(f"CREATE TABLE {FILL_TABLE} (id bigint PRIMARY KEY, payload text)")
        first = 0
        while True:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            assert row is not None
            missing = wanted - int(row[0])
            if missing <= 0:
                return int(row[0])
            rows = max(1_000, min(_FILL_ROWS, missing // _ROW_BYTES))
            # Six md5s of different inputs per row: 192 bytes of hex no other row repeats
            # (md5 of g + 1 would repeat the next row's), so lz4 finds little to compress.
            conn.execute(
                f"INSERT INTO {FILL_TABLE} SELECT g, md5(g || 'a') || md5(g || 'b') || "
                "md5(g || 'c') || md5(g || 'd') || md5(g || 'e') || md5(g || 'f') "
                "FROM generate_series(%s::bigint, %s::bigint) AS g", (first, first + rows - 1))
            first += rows


def _restore_once(cluster: LocalCluster, into: Path) -> RestoreRun:
    marks: list[tuple[float, str]] = []
    started = time.monotonic()
    restore(cluster, into, RestoreTarget("latest"),
            progress=lambda text: marks.append((time.monotonic(), text)))
    ended = time.monotonic()
    files_from = next(t for t, text in marks if text.startswith("pgbackrest restore"))
    data_bytes = _tree_size(into)
    copy = into.with_name(into.name + "-copy")
    try:
        copy_seconds = _copy_and_sync(into, copy)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    port = int(json.loads((into / "restored.json").read_text())["port"])
    node = restored_node(into, port, cluster.directory)
    begun = time.monotonic()
    try:
        start_restored(cluster, node, timeout=600)
        start_seconds = time.monotonic() - begun
    finally:
        node.stop("fast")
        shutil.rmtree(into, ignore_errors=True)
    return RestoreRun(data_bytes, files_from - started, ended - files_from, copy_seconds,
                      start_seconds)


def _copy_and_sync(source: Path, target: Path) -> float:
    """Seconds of ``cp -a source target`` plus an fsync of every file and directory copied."""
    started = time.monotonic()
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)
    for root, _dirs, files in os.walk(target):
        for name in [*files, "."]:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    return time.monotonic() - started


def _set_archiving(cluster: LocalCluster, on: bool) -> None:
    """Restart the primary with archive_mode on or off (it takes a restart), and pgbouncer-rw,
    whose server connections the restart closed; then wait until the pool serves."""
    if _archive_mode(cluster) == on:
        return
    cluster.state.backup = on  # in memory only: the node's settings omit archiving when off
    cluster.restart(cluster.state.primary)
    cluster.restart("pgbouncer-rw")
    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(cluster.dsn(port=cluster.state.rw_port), connect_timeout=5,
                                 prepare_threshold=None) as conn:
                conn.execute("SELECT 1")
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    if _archive_mode(cluster) != on:
        raise RuntimeError(f"archive_mode did not become {'on' if on else 'off'}")


def _archive_mode(cluster: LocalCluster) -> bool:
    with _superuser(cluster) as conn:
        row = conn.execute("SELECT current_setting('archive_mode')").fetchone()
    return row is not None and row[0] == "on"


def _archived_count(cluster: LocalCluster) -> int:
    with _superuser(cluster) as conn:
        row = conn.execute("SELECT archived_count FROM pg_stat_archiver").fetchone()
    return int(row[0]) if row else 0


def _write_once(cluster: LocalCluster, rate: float, seconds: float) -> WriteRun:
    before = _archived_count(cluster)
    p50, p99, achieved = asyncio.run(_latency(cluster.env()["SAGAZ_STORAGE_URL"], rate, seconds))
    with _superuser(cluster) as conn:
        conn.execute("SELECT pg_switch_wal()")  # the run's last segment is archived too
    time.sleep(1.0)
    return WriteRun(p50, p99, achieved, _archived_count(cluster) - before)


def _median_spread(values: Sequence[float], fmt: str) -> str:
    return (f"{format(statistics.median(values), fmt)} "
            f"({format(min(values), fmt)}-{format(max(values), fmt)})")


def format_report(result: BackupBenchmark) -> str:
    restores, on, off = result.restores, result.archiving_on, result.archiving_off
    n = len(restores)
    lines = [
        f"Backups with pgBackRest: local primary + 1 streaming replica, WAL archived "
        f"asynchronously (lz4); medians of {n} runs (min-max)",
        f"  database {result.database_bytes / MIB:,.0f} MiB (filled in "
        f"{result.fill_seconds:.1f} s); full backup from the replica in "
        f"{result.backup_seconds:.1f} s, {result.backup_repository_bytes / MIB:,.0f} MiB in "
        "the repository",
        f"  restore --to latest, files: "
        f"{_median_spread([r.mib_per_second for r in restores], ',.0f')} MiB/s"
        f" of a {statistics.median(r.data_bytes for r in restores) / MIB:,.0f} MiB data "
        f"directory in {_median_spread([r.files_seconds for r in restores], '.1f')} s",
        f"  cp -a + fsync of the same directory: "
        f"{_median_spread([r.copy_mib_per_second for r in restores], ',.0f')} MiB/s; restore "
        f"/ copy = {_median_spread([r.ratio for r in restores], '.2f')}",
        f"  restore end to end: archive checks "
        f"{_median_spread([r.check_seconds for r in restores], '.1f')} s + files + start to "
        f"writable {_median_spread([r.start_seconds for r in restores], '.1f')} s = "
        f"{_median_spread([r.total_seconds for r in restores], '.1f')} s",
        f"  write path, 3-step no-op sagas through pgbouncer-rw at {result.offered_rate:,.0f} "
        f"sagas/s offered for {result.seconds:g} s:",
    ]
    for label, measured in (("archive_mode on ", on), ("archive_mode off", off)):
        lines.append(
            f"    {label}: run() p50 {_median_spread([w.p50_ms for w in measured], '.1f')} ms, "
            f"p99 {_median_spread([w.p99_ms for w in measured], '.1f')} ms; achieved "
            f"{statistics.median(w.achieved_rate for w in measured):,.0f}/s; "
            f"{sum(w.archived_segments for w in measured)} WAL segments archived")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1_000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--base-port", type=int, default=46432)
    args = parser.parse_args(argv)
    print(format_report(run_backup_benchmark(args.size_mb, args.runs, args.rate, args.seconds,
                                             args.base_port, progress=print)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
