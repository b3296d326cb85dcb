"""``sagaz dev restore``: the whole local cluster back to a time T from its pgBackRest
repository, against real pgBackRest, PostgreSQL and PgBouncer: afterwards it serves through
SAGAZ_STORAGE_URL (pgbouncer-rw) with exactly the sagas acknowledged before T, its replica
streams from the restored primary, and archiving and backups go on on the new timeline."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from backupcluster import backup_cluster
from devcluster import require_cluster_binaries, run_cli
from steady_load import SteadyLoad, verify_on_primary

from sagaz.ha.local import LocalCluster

RATE = 40.0


def _sagas_through_the_write_pool(url: str) -> dict[str, tuple[str, int]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5, prepare_threshold=None) as conn:
        rows = conn.execute("""
            SELECT e.saga_id::text, e.status,
                   (SELECT count(*) FROM saga_steps s
                     WHERE s.saga_id = e.saga_id AND s.status = 'COMPLETED')
              FROM saga_executions e""").fetchall()
    return {r[0]: (r[1], int(r[2])) for r in rows}


@pytest.mark.slow
def test_dev_restore_to_a_time_brings_back_exactly_the_sagas_acknowledged_before_it() -> None:
    with backup_cluster(1) as dev:
        cluster = dev.cluster
        with SteadyLoad(cluster.dsn(port=cluster.state.rw_port), rate=RATE) as load:
            time.sleep(3)
            target = time.time()
            time.sleep(3)
            report = load.stop()
        assert not report.errors, report.errors[:3]
        before = {s for s, t in report.acknowledged_at.items() if t < target}
        later = {s for s, t in report.acknowledged_at.items() if t > target + 1.0}
        assert len(before) > 50 and len(later) > 50

        when = datetime.fromtimestamp(target, UTC).isoformat()
        restored = dev.cli("dev", "restore", "--to", when, "--json")
        assert restored.code == 0, restored.out + restored.err
        result = json.loads(restored.out)
        assert result["primary"] == "node0" and result["replicas"] == ["node1"]
        assert result["target"].startswith(when[:19].replace("T", " "))

        cluster = dev.cluster
        url = cluster.env()["SAGAZ_STORAGE_URL"]
        assert f":{cluster.state.rw_port}/" in url
        sagas = _sagas_through_the_write_pool(url)
        missing = before - set(sagas)
        assert not missing, f"{len(missing)} sagas acknowledged before T are missing"
        assert all(sagas[s] == ("COMPLETED", 3) for s in before)
        assert not (later & set(sagas)), "sagas acknowledged well after T came back"
        assert len(sagas) <= len(before) + RATE, "more sagas restored than started before T"

        with psycopg.connect(cluster.node_dsn("node0"), autocommit=True) as conn:
            replication = conn.execute(
                "SELECT application_name, state FROM pg_stat_replication").fetchall()
            timeline = conn.execute(
                "SELECT timeline_id FROM pg_control_checkpoint()").fetchone()
            auto_conf = Path(cluster.node("node0").datadir / "postgresql.auto.conf").read_text()
        assert ("node1", "streaming") in replication
        assert timeline is not None and timeline[0] >= 2
        assert "recovery_target" not in auto_conf  # a clone of it must not stop at T
        status = dev.cli("dev", "status", "--json")
        assert status.code == 0, status.out + status.err
        assert json.loads(status.out)["healthy"] is True

        # It takes sagas again, archives them on the new timeline, and backs up.
        with SteadyLoad(url, rate=RATE) as load:
            time.sleep(2)
            after = load.stop()
        assert not after.errors, after.errors[:3]
        verify_on_primary(cluster.dsn(), after)
        check = dev.cli("backup", "check")
        assert check.code == 0, check.out + check.err
        backup = dev.cli("backup", "run", "--type", "incr")
        assert backup.code == 0, backup.out + backup.err


def test_dev_restore_refuses_a_cluster_without_backups_in_one_line(tmp_path: Path) -> None:
    require_cluster_binaries()
    LocalCluster.new(tmp_path / "cluster").save()  # never started: nothing runs
    result = run_cli("dev", "restore", "--to", "latest", "--dir", str(tmp_path / "cluster"))
    assert result.code == 2
    assert result.err.strip().count("\n") == 0
    assert "backups are not configured" in result.err and "--backup" in result.err
    bad = run_cli("dev", "restore", "--to", "yesterday", "--dir", str(tmp_path / "cluster"))
    assert bad.code == 2 and "neither `latest`" in bad.err
