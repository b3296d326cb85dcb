"""A replica that stays down while the primary writes more WAL than max_slot_wal_keep_size: the
primary gives its slot up instead of filling its disk, `sagaz dev status` says so (exit 1), and
the replica comes back from a fresh base backup: rebuilt by the supervisor, by `sagaz dev up`, by
`sagaz ha rejoin`, or (generated deployments) by replica-bootstrap.sh on its next start.

The cluster caps the slots at 32MB: two 16 MB WAL segments (PostgreSQL rounds the cap down to
whole segments), so a few pg_switch_wal() and a CHECKPOINT invalidate a slot whose replica is
down. The tests run in file order on one cluster."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from devcluster import DevCluster, dev_cluster

from sagaz.deploy.scripts import replica_bootstrap_script
from sagaz.ha.local import REPLICATION_USER, LocalCluster
from sagaz.ha.supervisor import start_supervisor, stop_supervisor

pytestmark = pytest.mark.slow

CAP = "32MB"
TABLE = "written_while_down"


@pytest.fixture(scope="module")
def dev() -> Iterator[DevCluster]:
    with dev_cluster(1, "--no-supervise", "--max-slot-wal-keep-size", CAP) as cluster:
        with _sql(cluster.cluster) as conn:
            conn.execute(f"CREATE TABLE {TABLE} (round int, n int)")
        yield cluster


def _sql(cluster: LocalCluster, node: str | None = None) -> psycopg.Connection[Any]:
    """A superuser connection to the application database on ``node`` (default: the primary)."""
    return psycopg.connect(cluster.node_dsn(node or cluster.state.primary,
                                            dbname=cluster.state.dbname),
                           autocommit=True, connect_timeout=3)


def _slot(cluster: LocalCluster, name: str) -> tuple[str, int | None] | None:
    with _sql(cluster) as conn:
        row = conn.execute("SELECT wal_status, safe_wal_size FROM pg_replication_slots "
                           "WHERE slot_name = %s", (name,)).fetchone()
    return None if row is None else (row[0], row[1])


def _write_past_the_cap(cluster: LocalCluster, round_: int) -> None:
    """Rows, and more WAL segments than the cap keeps, then the checkpoint that invalidates."""
    with _sql(cluster) as conn:
        for _ in range(4):
            conn.execute(f"INSERT INTO {TABLE} SELECT %s, generate_series(1, 1000)", (round_,))
            conn.execute("SELECT pg_switch_wal()")
        conn.execute("CHECKPOINT")


def _status(dev: DevCluster) -> tuple[int, dict[str, Any]]:
    result = dev.cli("dev", "status", "--json")
    return result.code, json.loads(result.out)


def _eventually(check: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(0.2)


def _streams_with_the_rows(dev: DevCluster, replica: str, round_: int) -> None:
    """Within a bounded wait: status ok, the slot reserved again, the replica streaming, and the
    rows written while it was down on it."""
    cluster = dev.cluster

    def recovered() -> bool:
        code, status = _status(dev)
        slots = {s["name"]: s["wal_status"] for s in status["slots"]}
        states = {r["name"]: r["state"] for r in status["replication"]}
        return (code == 0 and slots.get(replica) in ("reserved", "extended")
                and states.get(replica) == "streaming")

    _eventually(recovered, 120)
    with _sql(cluster, replica) as conn:
        _eventually(lambda: conn.execute(f"SELECT count(*) FROM {TABLE} WHERE round = %s",
                                         (round_,)).fetchone() == (4000,), 30)


def _lose_the_slot_of(dev: DevCluster, replica: str, round_: int) -> None:
    cluster = dev.cluster
    cluster.node(replica).stop()
    _write_past_the_cap(cluster, round_)
    assert _slot(cluster, replica) == ("lost", None)


def test_the_cap_is_in_every_nodes_configuration_and_status_reports_the_slots(
    dev: DevCluster,
) -> None:
    cluster = dev.cluster
    for name in cluster.state.nodes:
        conf = (cluster.node(name).datadir / "sagaz.conf").read_text()
        assert f"max_slot_wal_keep_size = '{CAP}'" in conf
        assert f"wal_keep_size = '{CAP}'" in conf  # never more than the cap: it would raise it
    with _sql(cluster) as conn:
        assert conn.execute("SHOW max_slot_wal_keep_size").fetchone() == (CAP,)
    code, status = _status(dev)
    assert code == 0, status
    (slot,) = status["slots"]
    assert slot["name"] == "node1" and slot["wal_status"] == "reserved"
    assert 0 < slot["safe_wal_size"] <= 3 * 16 * 1024 * 1024


def test_status_reports_a_lost_slot_and_exits_1(dev: DevCluster) -> None:
    _lose_the_slot_of(dev, "node1", round_=1)
    code, status = _status(dev)
    assert code == 1
    assert status["healthy"] is False
    (slot,) = status["slots"]
    assert (slot["name"], slot["wal_status"], slot["safe_wal_size"]) == ("node1", "lost", None)
    (error,) = [e for e in status["errors"] if "node1" in e]
    assert "lost" in error and f"max_slot_wal_keep_size ({CAP})" in error
    assert "sagaz ha rejoin node1" in error  # no supervisor runs: what to do
    text = dev.cli("dev", "status")
    assert text.code == 1
    assert "replication slots: node1 lost" in text.out
    assert "fresh base backup" in " ".join(text.err.split())


def test_the_supervisor_rebuilds_a_replica_whose_slot_was_lost(dev: DevCluster) -> None:
    cluster = dev.cluster
    # Started again, the replica cannot stream: the WAL it asks for is gone.
    cluster.node("node1").start()
    time.sleep(1)
    assert _slot(cluster, "node1") == ("lost", None)
    start_supervisor(cluster, 0.5)
    try:
        _streams_with_the_rows(dev, "node1", round_=1)
        _, status = _status(dev)
        assert not status["errors"]
    finally:
        stop_supervisor(cluster)
    log = (cluster.directory / "supervisor.log").read_text()
    assert log.count("rebuilding it from a fresh base backup") == 1, log
    assert "rebuilt node1" in log


@pytest.mark.parametrize("command", [("dev", "up", "--no-supervise"), ("ha", "rejoin", "node1")])
def test_up_and_rejoin_clone_a_replica_whose_slot_was_lost(
    dev: DevCluster, command: tuple[str, ...],
) -> None:
    round_ = 2 if command[0] == "dev" else 3
    _lose_the_slot_of(dev, "node1", round_)
    result = dev.cli(*command)
    assert result.code == 0, result.out + result.err
    assert "slot was lost" in " ".join(result.out.split())
    _streams_with_the_rows(dev, "node1", round_)


def test_the_deployments_bootstrap_clones_a_replica_whose_slot_was_lost(
    dev: DevCluster, tmp_path: Path,
) -> None:
    """replica-bootstrap.sh (docker-compose and Kubernetes) on its next start, against a real
    lost slot: it drops the data and clones again; with a healthy slot it keeps the data."""
    cluster = dev.cluster
    script = tmp_path / "replica-bootstrap.sh"
    script.write_text(replica_bootstrap_script())
    pgdata = tmp_path / "replica" / "pgdata"
    pgdata.parent.mkdir()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PG", "SAGAZ_"))},
           "PATH": f"{cluster.state.bindir}:{os.environ['PATH']}",
           "PGDATA": str(pgdata), "SAGAZ_ROLE": "replica",
           "SAGAZ_PRIMARY_HOST": cluster.primary.host,
           "SAGAZ_PRIMARY_PORT": str(cluster.primary.port),
           "SAGAZ_REPLICATION_USER": REPLICATION_USER, "SAGAZ_REPLICATION_SLOT": "bootstrap_probe",
           "SAGAZ_REPLICATION_PASSWORD": cluster.passwords[REPLICATION_USER]}

    def bootstrap() -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        return result

    try:
        bootstrap()
        marker = pgdata / "from-the-first-clone"
        marker.touch()
        again = bootstrap()  # slot intact: the data stays
        assert marker.exists() and "cloning" not in again.stdout + again.stderr
        _write_past_the_cap(cluster, round_=4)
        assert _slot(cluster, "bootstrap_probe") == ("lost", None)
        rebuilt = bootstrap()
        assert "gave up slot bootstrap_probe" in rebuilt.stderr
        assert not marker.exists() and (pgdata / "standby.signal").exists()
        status = _slot(cluster, "bootstrap_probe")
        assert status is not None and status[0] == "reserved"
    finally:
        cluster.drop_slot("bootstrap_probe")
        shutil.rmtree(pgdata, ignore_errors=True)


def test_up_changes_the_cap_of_a_running_cluster(dev: DevCluster) -> None:
    result = dev.cli("dev", "up", "--no-supervise", "--max-slot-wal-keep-size", "64mb")
    assert result.code == 0, result.out + result.err
    assert "max_slot_wal_keep_size is now 64MB" in result.out
    cluster = dev.cluster
    assert cluster.state.max_slot_wal_keep_size == "64MB"

    def reloaded(name: str) -> bool:  # a reload (SIGHUP) takes effect asynchronously
        with _sql(cluster, name) as conn:
            return conn.execute("SELECT current_setting('max_slot_wal_keep_size'), "
                                "current_setting('wal_keep_size')").fetchone() == ("64MB", "64MB")

    for name in cluster.state.nodes:
        _eventually(lambda: reloaded(name), 10)  # noqa: B023 (called at once)
    again = dev.cli("dev", "up", "--no-supervise", "--max-slot-wal-keep-size", "64MB")
    assert again.code == 0 and "is now" not in again.out and "nothing to do" in again.out
