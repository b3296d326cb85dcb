"""Restore drills that prove the recovery point, under a steady saga load, against real
pgBackRest and PostgreSQL:

- to a time T: every saga acknowledged before T is back with its steps, no saga started after T
  is, and the restored database passes the schema and partition checks;
- differential and incremental backups restore to the same state as the full one;
- ``latest`` after SIGKILL of every process of the cluster: the acknowledged sagas missing are
  only those of the last moments before the kill (the window is printed: the measured RPO).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from backupcluster import (
    backup_cluster,
    on_restored,
    restore_json,
    stop_restored_server,
    switch_and_archive,
)
from devcluster import DevCluster, processes_of
from steady_load import SteadyLoad

from sagaz.ha.local import SUPERUSER
from sagaz.storage.sql import migrations

pytestmark = pytest.mark.slow

RATE = 40.0


def _scratch() -> Path:
    parent = Path(tempfile.mkdtemp(prefix="sagaz-restore-"))
    parent.chmod(0o755)
    return parent / "restored"


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def _restored_sagas(dev: DevCluster, port: int) -> dict[str, tuple[str, int]]:
    """saga id -> (status, completed steps) in a restored server."""
    rows = on_restored(dev, port, """
        SELECT e.saga_id::text, e.status,
               (SELECT count(*) FROM saga_steps s
                 WHERE s.saga_id = e.saga_id AND s.status = 'COMPLETED')
          FROM saga_executions e""")
    return {r[0]: (r[1], int(r[2])) for r in rows}


def _check_schema_and_partitions(dev: DevCluster, port: int) -> None:
    versions = {r[0] for r in on_restored(dev, port, "SELECT version FROM sagaz_migrations")}
    assert versions == {m.version for m in migrations("postgresql")}
    stats = on_restored(dev, port, "SELECT table_name, count(*) FROM "
                                   "get_partition_statistics() GROUP BY 1")
    assert {t for t, _ in stats} >= {"saga_executions", "saga_outbox"}
    # maintain_all_partitions() runs on the restored copy (and is rolled back).
    cluster = dev.cluster
    with psycopg.connect(host="127.0.0.1", port=port, user=SUPERUSER,
                         password=cluster.passwords[SUPERUSER], dbname=cluster.state.dbname,
                         connect_timeout=5) as conn:
        conn.execute("SELECT count(*) FROM maintain_all_partitions()").fetchall()
        conn.rollback()


def test_restore_to_a_time_under_load_keeps_exactly_what_was_acknowledged() -> None:
    with backup_cluster(1) as dev:
        cluster = dev.cluster
        with SteadyLoad(cluster.dsn(port=cluster.state.rw_port), rate=RATE) as load:
            time.sleep(2)
            full = dev.cli("backup", "run", "--type", "full")
            assert full.code == 0, full.out + full.err
            time.sleep(3)
            target = time.time()
            time.sleep(3)
            report = load.stop()
        switch_and_archive(dev)
        assert not report.errors, report.errors[:3]
        before = {s for s, t in report.acknowledged_at.items() if t < target}
        after_started = len([t for t in report.started_at if t > target + 0.05])
        assert len(before) > 50 and after_started > 50
        when = datetime.fromtimestamp(target, UTC).isoformat()
        into = _scratch()
        restored = restore_json(dev, "--to", when, "--into", str(into), "--start")
        try:
            assert restored["target"].startswith(when[:19].replace("T", " "))
            sagas = _restored_sagas(dev, _port(restored["url"]))
            missing = before - set(sagas)
            assert not missing, f"{len(missing)} sagas acknowledged before T are missing"
            assert all(sagas[s] == ("COMPLETED", 3) for s in before)
            # Nothing of after T: every saga of the restored copy was known before T.
            everything = set(report.acknowledged_at)
            later = {s for s in everything if report.acknowledged_at[s] > target + 1.0}
            assert not (later & set(sagas)), "sagas acknowledged well after T were restored"
            assert len(sagas) <= len(before) + RATE, "more sagas restored than started before T"
            _check_schema_and_partitions(dev, _port(restored["url"]))
        finally:
            stop_restored_server(str(into))


def test_differential_and_incremental_restore_to_the_same_state_as_full() -> None:
    with backup_cluster(1) as dev:
        cluster = dev.cluster
        labels: dict[str, str] = {}
        with SteadyLoad(cluster.dsn(port=cluster.state.rw_port), rate=RATE) as load:
            for kind in ("full", "diff", "incr"):
                time.sleep(1.5)
                made = dev.cli("backup", "run", "--type", kind)
                assert made.code == 0, made.out + made.err
                listed = json.loads(dev.cli("backup", "list", "--json").out)["backups"]
                labels[kind] = listed[-1]["label"]
                assert listed[-1]["type"] == kind
            time.sleep(1.5)
            report = load.stop()
        switch_and_archive(dev)
        assert not report.errors
        states: dict[str, Any] = {}
        for kind, label in labels.items():
            into = _scratch()
            restored = restore_json(dev, "--to", "latest", "--into", str(into), "--start",
                                    "--set", label)
            try:
                states[kind] = _restored_sagas(dev, _port(restored["url"]))
            finally:
                stop_restored_server(str(into))
        assert states["diff"] == states["full"] == states["incr"]
        assert set(report.acknowledged_at) <= set(states["full"])


def test_latest_after_sigkill_of_the_whole_cluster_loses_only_the_last_seconds() -> None:
    with backup_cluster(1) as dev:
        cluster = dev.cluster
        timeout = cluster.state.archive_timeout
        with SteadyLoad(cluster.dsn(port=cluster.state.rw_port), rate=RATE,
                        retry_timeout=1.0) as load:
            time.sleep(8)
            killed_at = time.time()
            for pid in processes_of(dev.directory):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            report = load.stop()
        acknowledged = {s: t for s, t in report.acknowledged_at.items() if t <= killed_at}
        assert len(acknowledged) > 100
        into = _scratch()
        restored = restore_json(dev, "--to", "latest", "--into", str(into), "--start")
        try:
            sagas = _restored_sagas(dev, _port(restored["url"]))
        finally:
            stop_restored_server(str(into))
        # Lost: absent, or back in an earlier state (its creation was archived, its completion
        # was not): either way the acknowledged outcome is what the last seconds took.
        missing = {s: t for s, t in acknowledged.items() if sagas.get(s) != ("COMPLETED", 3)}
        window = killed_at - min(missing.values()) if missing else 0.0
        print(f"\nRPO drill: {len(missing)} of {len(acknowledged)} acknowledged sagas missing "
              f"or unfinished after SIGKILL of the cluster; window {window:.2f} s "
              f"(archive_timeout {timeout} s); restore {restored['seconds']:.2f} s")
        # Everything acknowledged before the last archive_timeout (and the push) came back whole.
        assert window <= 2 * timeout + 1.0, (len(missing), window)
