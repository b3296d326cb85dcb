"""`sagaz dev up --backup` and `sagaz backup` against real pgBackRest and PostgreSQL: the stanza,
archiving that follows a promotion and a rejoin, backups from the replica, restores that refuse a
used directory, and an archive with a hole or a corrupt segment named as such."""

from __future__ import annotations

import json
import stat
import tempfile
from pathlib import Path

import pytest
from backupcluster import (
    backup_cluster,
    on_primary,
    on_restored,
    restore_json,
    stop_restored_server,
    switch_and_archive,
)

pytestmark = pytest.mark.slow


def test_backups_from_the_replica_and_archiving_across_promote_and_rejoin() -> None:
    with backup_cluster(1) as dev:
        cluster = dev.cluster
        backup_dir = cluster.backup_dir
        for secret in ("pgbackrest.conf", "pgpass"):
            mode = stat.S_IMODE((backup_dir / secret).stat().st_mode)
            assert mode == 0o600, (secret, oct(mode))
        conf = (backup_dir / "pgbackrest.conf").read_text()
        assert "backup-standby=y" in conf and "repo1-type=posix" in conf
        assert f"repo1-path={backup_dir / 'repo'}" in conf
        for name in cluster.state.nodes:
            sagaz_conf = (cluster.directory / name / "data" / "sagaz.conf").read_text()
            assert "archive_mode = on" in sagaz_conf and "archive_timeout = '2s'" in sagaz_conf
            assert f"--pg1-path={cluster.directory / name / 'data'}" in sagaz_conf
        # The first full backup was read from the replica.
        log = "".join(p.read_text() for p in (backup_dir / "log").glob("*backup*.log"))
        assert "wait for replay on the standby" in log
        listed = json.loads(dev.cli("backup", "list", "--json").out)
        assert [b["type"] for b in listed["backups"]] == ["full"]
        assert listed["wal_max"] and listed["repository_bytes"] > 0
        assert dev.cli("backup", "check").code == 0

        on_primary(dev, "CREATE TABLE before_promote AS SELECT 1 AS x")
        switch_and_archive(dev)
        promoted = dev.cli("ha", "promote", "node1")
        assert promoted.code == 0, promoted.out + promoted.err
        on_primary(dev, "CREATE TABLE after_promote AS SELECT 2 AS x")
        segment = switch_and_archive(dev)
        assert segment.startswith("00000002"), segment  # the new primary archives timeline 2
        check = dev.cli("backup", "check")
        assert check.code == 0, check.out + check.err

        incr = dev.cli("backup", "run", "--type", "incr")
        assert incr.code == 0, incr.out + incr.err
        rejoined = dev.cli("ha", "rejoin", "node0")
        assert rejoined.code == 0, rejoined.out + rejoined.err
        on_primary(dev, "CREATE TABLE after_rejoin AS SELECT 3 AS x")
        switch_and_archive(dev)

        # The full backup of timeline 1 plus WAL of both timelines reaches the latest state.
        parent = Path(tempfile.mkdtemp(prefix="sagaz-restore-"))
        parent.chmod(0o755)
        restored = restore_json(dev, "--to", "latest", "--into", str(parent / "r"), "--start",
                                "--set", listed["backups"][0]["label"])
        try:
            assert set(restored) >= {"url", "target", "restored_lsn", "seconds"}
            tables = {r[0] for r in on_restored(dev, _port(restored["url"]),
                                                "SELECT tablename FROM pg_tables")}
            assert {"before_promote", "after_promote", "after_rejoin"} <= tables
        finally:
            stop_restored_server(str(parent / "r"))


def test_restore_refuses_a_used_directory_and_a_bad_target() -> None:
    with backup_cluster(0) as dev:
        node_dir = dev.directory / "node0"
        used = dev.cli("backup", "restore", "--to", "latest", "--into", str(node_dir))
        assert used.code == 2 and "is not empty" in used.err, used.err
        naive = dev.cli("backup", "restore", "--to", "2026-01-01T00:00:00", "--into",
                        str(dev.directory.parent / "x"))
        assert naive.code == 2 and "time zone offset" in naive.err, naive.err


def test_a_missing_or_corrupt_segment_is_named() -> None:
    with backup_cluster(0) as dev:
        from sagaz.ha.backup.repo import BackupRepository

        archive = BackupRepository(dev.cluster).archive_path
        names = []
        for i in range(3):
            on_primary(dev, f"CREATE TABLE t{i} AS SELECT generate_series(1, 1000) AS x")
            names.append(switch_and_archive(dev))
        assert dev.cli("backup", "check").code == 0
        corrupt = next(archive.glob(f"*/*/{names[2]}-*"))
        data = bytearray(corrupt.read_bytes())
        data[len(data) // 2] ^= 0xFF
        corrupt.write_bytes(bytes(data))
        check = dev.cli("backup", "check")
        assert check.code == 1 and names[2] in check.err and "corrupt" in check.err, check.err

        missing = next(archive.glob(f"*/*/{names[1]}-*"))
        missing.unlink()
        check = dev.cli("backup", "check")
        assert check.code == 1 and names[1] in check.err and "missing" in check.err, check.err
        assert len(check.err.strip().splitlines()) == 1
        parent = Path(tempfile.mkdtemp(prefix="sagaz-restore-"))
        parent.chmod(0o755)
        restore = dev.cli("backup", "restore", "--to", "latest", "--into", str(parent / "r"),
                          "--start")
        assert restore.code == 3 and names[1] in restore.err, restore.err
        assert not (parent / "r").exists()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def test_restore_drill_and_retention() -> None:
    with backup_cluster(0) as dev:
        on_primary(dev, "SELECT 1")
        drill = dev.cli("backup", "verify", "--json")
        assert drill.code == 0, drill.out + drill.err
        report = json.loads(drill.out)
        assert report["row_counts"]["saga_executions"] == 0
        assert report["partitions"]["saga_executions"] >= 1 and report["restore_seconds"] > 0
        assert not list(Path(tempfile.gettempdir()).glob("sagaz-restore-drill-*"))
        for _ in range(2):
            made = dev.cli("backup", "run", "--type", "full", "--retention-full", "1")
            assert made.code == 0, made.out + made.err
        listed = json.loads(dev.cli("backup", "list", "--json").out)["backups"]
        assert [b["type"] for b in listed] == ["full"]
        assert "repo1-retention-full=1" in (dev.cluster.backup_dir / "pgbackrest.conf").read_text()
        wrong = dev.cli("backup", "run", "--type", "weekly")
        assert wrong.code == 2 and "full, diff or incr" in wrong.err
