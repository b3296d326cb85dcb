"""Failure drills on a primary with two replicas: a replica killed (the supervisor takes it out of
the read pool, reads go on; rejoin puts it back), a manual promotion (writes follow through
pgbouncer-rw, the old primary comes back as a replica), and `down --purge` leaving nothing.

The tests run in file order and build on each other, as a drill does."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from devcluster import DevCluster, dev_cluster, processes_of

from sagaz.ha.osuser import process_alive

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dev() -> Iterator[DevCluster]:
    with dev_cluster(replicas=2) as cluster:
        yield cluster


def _connect(conninfo: str) -> psycopg.Connection[Any]:
    return psycopg.connect(conninfo, autocommit=True, prepare_threshold=None, connect_timeout=3)


def _read_pool_hosts(dev: DevCluster) -> list[str]:
    cluster = dev.cluster
    return cluster.bouncer("ro").configured_hosts(cluster.state.dbname)


def _eventually(check: Callable[[], bool], seconds: float) -> float:
    """Seconds until ``check()`` held; fails after ``seconds``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - started


def _read_through_pool(dev: DevCluster) -> str:
    """One read on a fresh read-pool connection; the address of the server that answered."""
    cluster = dev.cluster
    with _connect(cluster.dsn(user="sagaz_reader", port=cluster.state.ro_port)) as conn:
        row = conn.execute("SELECT host(inet_server_addr())").fetchone()
    assert row is not None
    return str(row[0])


def test_the_read_pool_balances_over_both_replicas(dev: DevCluster) -> None:
    assert sorted(_read_pool_hosts(dev)) == ["127.0.0.2", "127.0.0.3"]
    answered = {_read_through_pool(dev) for _ in range(6)}
    assert answered <= {"127.0.0.2", "127.0.0.3"}


def test_a_killed_replica_leaves_the_read_pool_and_reads_continue(dev: DevCluster) -> None:
    victim = dev.cluster.node("node2")
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    took = _eventually(lambda: _read_pool_hosts(dev) == ["127.0.0.2"], 5.0)
    # Every new read-pool connection now lands on node1, none fails.
    for _ in range(20):
        assert _read_through_pool(dev) == "127.0.0.2"
    log = (dev.directory / "supervisor.log").read_text()
    assert "node2" in log and "now balances over node1" in log
    status = json.loads(dev.cli("dev", "status", "--json").out)
    assert status["healthy"] is False
    assert {n["name"]: n["role"] for n in status["nodes"]}["node2"] == "down"
    print(f"supervisor took node2 out of pgbouncer-ro after {took:.2f} s")


def test_rejoin_brings_the_killed_replica_back_into_the_read_pool(dev: DevCluster) -> None:
    result = dev.cli("ha", "rejoin", "node2")
    assert result.code == 0, result.out + result.err
    assert "node2 is a replica of node0" in result.out
    _eventually(lambda: sorted(_read_pool_hosts(dev)) == ["127.0.0.2", "127.0.0.3"], 5.0)
    status = json.loads(dev.cli("dev", "status", "--json").out)
    assert {r["name"]: r["state"] for r in status["replication"]} == {
        "node1": "streaming", "node2": "streaming"}


def test_promote_moves_writes_to_the_new_primary_and_rebuilds_the_old_one(
    dev: DevCluster,
) -> None:
    cluster = dev.cluster
    rw_url = cluster.dsn(port=cluster.state.rw_port)
    with _connect(rw_url) as conn:
        conn.execute("CREATE TABLE drill (id int PRIMARY KEY, at text)")
        conn.execute("INSERT INTO drill VALUES (1, 'before the promotion')")

    result = dev.cli("ha", "promote", "node1")
    assert result.code == 0, result.out + result.err
    for stage in ("pausing pgbouncer-rw", "stopping the old primary node0", "promoting node1",
                  "RELOAD", "node0"):
        assert stage in result.out
    assert "write pool was unavailable for" in result.out
    assert "node0 is a replica again" in result.out
    print(result.out)

    cluster = dev.cluster
    assert cluster.state.primary == "node1"
    # The application's URL is unchanged: pgbouncer-rw now reaches node1.
    with _connect(rw_url) as conn:
        conn.execute("INSERT INTO drill VALUES (2, 'after the promotion')")
        where = conn.execute("SELECT pg_is_in_recovery(), host(inet_server_addr())").fetchone()
        assert where == (False, "127.0.0.2")
        assert conn.execute("SELECT count(*) FROM drill").fetchone() == (2,)
    # The old primary is a replica of the new one, and so is node2.
    with _connect(cluster.node_dsn("node0", dbname="sagaz")) as old:
        assert old.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        _eventually(lambda: old.execute("SELECT count(*) FROM drill").fetchone() == (2,), 10)
    with _connect(cluster.node_dsn("node1")) as new:
        _eventually(lambda: sorted(new.execute(
            "SELECT application_name, state FROM pg_stat_replication").fetchall())
            == [("node0", "streaming"), ("node2", "streaming")], 10)
    _eventually(lambda: sorted(_read_pool_hosts(dev)) == ["127.0.0.1", "127.0.0.3"], 5.0)
    status = json.loads(dev.cli("dev", "status", "--json").out)
    assert status["healthy"] is True, status
    assert status["pools"]["rw"]["hosts"] == ["127.0.0.2"]


def test_promote_refuses_what_is_not_a_running_replica(dev: DevCluster) -> None:
    result = dev.cli("ha", "promote", "node1")
    assert result.code == 2 and "is the primary already" in result.err
    result = dev.cli("ha", "promote", "node7")
    assert result.code == 2 and "no node 'node7'" in result.err


def test_rejoin_copies_the_node_again_when_pg_rewind_cannot_work(dev: DevCluster) -> None:
    node = dev.cluster.node("node2")
    node.stop("fast")
    # As a former primary whose control file is damaged: pg_rewind refuses it.
    (node.datadir / "standby.signal").unlink()
    (node.datadir / "global" / "pg_control").write_bytes(b"")
    result = dev.cli("ha", "rejoin", "node2")
    assert result.code == 0, result.out + result.err
    assert "pg_rewind failed" in result.out and "(pg_basebackup)" in result.out
    with _connect(dev.cluster.node_dsn("node2", dbname="sagaz")) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        _eventually(lambda: conn.execute("SELECT count(*) FROM drill").fetchone() == (2,), 10)


def test_down_purge_removes_everything_and_leaves_no_process(dev: DevCluster) -> None:
    cluster = dev.cluster
    pids = [p for p in (cluster.node(n).pid for n in cluster.state.nodes) if p]
    pids += [p for p in (cluster.bouncer(r).pid for r in ("rw", "ro")) if p]
    supervisor = int((dev.directory / "supervisor.pid").read_text())
    assert len(pids) == 5
    result = dev.cli("dev", "down", "--purge")
    assert result.code == 0, result.err
    assert "supervisor" in result.out and "deleted" in result.out
    assert not dev.directory.exists()
    assert not [p for p in [*pids, supervisor] if process_alive(p)]
    assert processes_of(dev.directory) == []
