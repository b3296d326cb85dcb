"""Automatic failover of the local cluster (``sagaz dev up --ha --failover``): real etcd, Patroni
and PostgreSQL on loopback. One three-node cluster serves the tests of this module in order
(bring-up, writes, status, refusals, then the switchover and the postmaster kill, which change
the leader); synchronous mode has a cluster of its own."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from patronicluster import FailoverCluster, Writer, failover_cluster, server_of, wait_until

from sagaz.deploy import patroni_follow

pytestmark = [pytest.mark.slow]

TABLE = "failover_probe"


@pytest.fixture(scope="module")
def failover() -> Iterator[FailoverCluster]:
    with failover_cluster() as cluster:
        with psycopg.connect(cluster.pool_dsn(), autocommit=True,
                             prepare_threshold=None) as conn:
            conn.execute(f"CREATE TABLE {TABLE} (v bigint PRIMARY KEY)")
        yield cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _status(failover: FailoverCluster) -> dict[str, object]:
    result = failover.cli("dev", "status", "--json")
    return dict(json.loads(result.out))


def _healthy_status(failover: FailoverCluster, timeout: float = 30) -> dict[str, object]:
    """The status once every member serves and the pools follow (a rejoin takes a moment)."""
    return dict(wait_until(lambda: (s := _status(failover))["healthy"] and s, timeout,
                           "a healthy cluster"))


def _load(writer: Writer, stop: threading.Event, start: int) -> None:
    value = start
    while not stop.is_set():
        writer.write_once(value)
        value += 1
        time.sleep(0.01)


def _under_load(failover: FailoverCluster, dsn: str, start: int):  # type: ignore[no-untyped-def]
    writer = Writer(dsn, TABLE)
    stop = threading.Event()
    thread = threading.Thread(target=_load, args=(writer, stop, start), daemon=True)
    thread.start()
    return writer, stop, thread


def _rows(failover: FailoverCluster) -> set[int]:
    with psycopg.connect(failover.pool_dsn(), autocommit=True, prepare_threshold=None) as conn:
        return {r[0] for r in conn.execute(f"SELECT v FROM {TABLE}").fetchall()}


@pytest.mark.timeout(240)
def test_bring_up_status_lists_leader_replicas_and_health(failover: FailoverCluster) -> None:
    status = _healthy_status(failover)
    assert status["leader"] == "node0"
    assert sorted(status["replicas"]) == ["node1", "node2"]  # type: ignore[arg-type]
    assert status["timeline"] == 1
    assert status["failsafe_mode"] is True and status["synchronous_mode"] is False
    assert status["sync_standby"] == []
    members = {m["name"]: m for m in status["members"]}  # type: ignore[attr-defined]
    assert members["node0"]["role"] == "leader" and members["node0"]["lag_bytes"] is None
    for replica in ("node1", "node2"):
        assert members[replica]["state"] == "streaming"
        assert isinstance(members[replica]["lag_bytes"], int)
    assert all(m["patroni"] is True and m["etcd"] is True for m in members.values())
    assert status["pools"] == {"rw": ["node0"], "ro": ["node1", "node2"]}
    assert isinstance(status["supervisor_pid"], int)


def test_writes_through_the_pool_and_the_multihost_dsn(failover: FailoverCluster) -> None:
    cluster = failover.cluster
    assert server_of(failover.pool_dsn()) == ("127.0.0.1", False)
    multihost = cluster.multihost_dsn(connect_timeout=2)
    assert server_of(multihost) == ("127.0.0.1", False)
    with psycopg.connect(multihost, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {TABLE} (v) VALUES (-1)")
    env = failover.cli("dev", "env").out
    assert "SAGAZ_STORAGE_URL='postgresql://sagaz:" in env
    assert f"@127.0.0.1:{cluster.state.rw_port}/sagaz?" in env
    assert "target_session_attrs=read-write" in env
    assert -1 in _rows(failover)


def test_secrets_and_state_files_are_private(failover: FailoverCluster) -> None:
    d = failover.directory
    for path in [d / "secrets.json", d / "cluster.json",
                 *(d / f"node{i}" / name for i in range(3)
                   for name in ("patroni.yml", "patroni.log", "etcd.log", "postgres.log"))]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for i in range(3):
        assert stat.S_IMODE((d / f"node{i}").stat().st_mode) == 0o700
    secrets = json.loads((d / "secrets.json").read_text())
    assert secrets["patroni"] and secrets["patroni"] not in failover.up.out


def test_manual_promote_and_rejoin_refuse_pointing_to_switchover(
        failover: FailoverCluster) -> None:
    promote = failover.cli("ha", "promote", "node1")
    assert promote.code == 2
    assert "sagaz ha switchover --to node1" in " ".join(promote.err.split())
    rejoin = failover.cli("ha", "rejoin", "node1")
    assert rejoin.code == 2 and "Patroni rejoins" in " ".join(rejoin.err.split())
    restart = failover.cli("dev", "restart", "node1")
    assert restart.code == 2 and "switchover" in " ".join(restart.err.split())
    rotate = failover.cli("dev", "rotate-secrets")
    assert rotate.code == 2 and "automatic failover" in " ".join(rotate.err.split())
    restore = failover.cli("dev", "restore", "--to", "latest")
    assert restore.code == 2 and "automatic failover" in " ".join(restore.err.split())


@pytest.mark.timeout(180)
def test_switchover_moves_the_pool_and_the_old_leader_rejoins(
        failover: FailoverCluster) -> None:
    writer, stop, thread = _under_load(failover, failover.pool_dsn(), 1_000_000)
    time.sleep(1)
    try:
        result = failover.cli("ha", "switchover", "--to", "node1")
        assert result.code == 0, result.out + result.err
        time.sleep(2)
    finally:
        stop.set()
        thread.join(10)
    assert server_of(failover.pool_dsn()) == ("127.0.0.2", False)
    status = _healthy_status(failover, timeout=60)
    assert status["leader"] == "node1" and status["timeline"] == 2
    members = {m["name"]: m for m in status["members"]}  # type: ignore[attr-defined]
    assert members["node0"]["role"] == "replica" and members["node0"]["state"] == "streaming"
    acknowledged = {v for v, _ in writer.acknowledged}
    assert acknowledged and acknowledged <= _rows(failover)
    print(f"switchover: write gap {writer.longest_gap():.2f} s, {len(acknowledged)} "
          f"acknowledged, {writer.errors} client errors")


@pytest.mark.timeout(120)
def test_failover_to_a_named_replica_and_bad_names(failover: FailoverCluster) -> None:
    unknown = failover.cli("ha", "switchover", "--to", "node9")
    assert unknown.code == 2 and "no node 'node9'" in " ".join(unknown.err.split())
    leader = failover.cluster.leader()
    itself = failover.cli("ha", "failover", "--to", str(leader))
    assert itself.code == 2 and "is the leader already" in " ".join(itself.err.split())
    target = next(n for n in ("node2", "node0") if n != leader)
    result = failover.cli("ha", "failover", "--to", target)
    assert result.code == 0, result.out + result.err
    assert f"{target} is the leader" in result.out
    status = _healthy_status(failover, timeout=60)
    assert status["leader"] == target and status["pools"]["rw"] == [target]  # type: ignore[index]


@pytest.mark.timeout(180)
def test_sigkill_of_the_leaders_postmaster_is_recovered(failover: FailoverCluster) -> None:
    cluster = failover.cluster
    leader = cluster.leader()
    assert leader is not None
    postmaster = cluster.local.node(leader).pid
    assert postmaster is not None
    # What shortens the restart in place: one syncfs instead of an fsync per file before the
    # redo, and at most 30 s of WAL to replay.
    with psycopg.connect(cluster.local.node_dsn(leader), autocommit=True,
                         prepare_threshold=None) as conn:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('recovery_init_sync_method', 'checkpoint_timeout')").fetchall())
    assert settings == {"recovery_init_sync_method": "syncfs", "checkpoint_timeout": "30"}
    writer, stop, thread = _under_load(failover, failover.pool_dsn(), 2_000_000)
    time.sleep(1)
    killed = time.monotonic()
    os.kill(postmaster, signal.SIGKILL)
    try:
        wait_until(lambda: writer.acknowledged and writer.acknowledged[-1][1] > killed + 0.1,
                   60, "a write acknowledged after the kill")
        time.sleep(1)
    finally:
        stop.set()
        thread.join(10)
    status = _healthy_status(failover, timeout=90)
    outcome = ("Patroni restarted it" if status["leader"] == leader
               else f"failed over to {status['leader']}")
    acknowledged = {v for v, _ in writer.acknowledged}
    assert acknowledged <= _rows(failover)
    print(f"postmaster SIGKILL on {leader}: {outcome}; write gap {writer.longest_gap():.2f} s, "
          f"{len(acknowledged)} acknowledged, {writer.errors} client errors")


@pytest.mark.timeout(240)
def test_sync_mode_shows_a_synchronous_standby() -> None:
    with failover_cluster("--sync", nodes=2) as sync:
        status = _healthy_status(sync)
        assert status["synchronous_mode"] is True
        assert status["sync_standby"] == ["node1"]
        members = {m["name"]: m for m in status["members"]}  # type: ignore[attr-defined]
        assert members["node1"]["role"] == "sync_standby"
        with psycopg.connect(sync.cluster.local.node_dsn("node0"), autocommit=True) as conn:
            rows = conn.execute("SELECT application_name, sync_state FROM "
                                "pg_stat_replication").fetchall()
        assert rows == [("node1", "sync")]


@pytest.mark.timeout(120)
def test_the_compose_follower_points_its_pgbouncer_at_the_leader(
        failover: FailoverCluster) -> None:
    """pgbouncer/patroni-follow.py of `sagaz init --with-ha --failover`, run as it runs in the
    container (it starts PgBouncer and re-points it), against this real cluster: a pool
    configured on a replica starts on the leader, and follows a switchover."""
    from sagaz.ha.osuser import service_user
    from sagaz.ha.patroni_cluster import patroni_command
    from sagaz.ha.pgbouncer import find_pgbouncer

    cluster = failover.cluster
    leader = cluster.leader()
    replica = next(n for n in cluster.state.nodes if n != leader)
    port = free_port()
    # Next to the cluster: a directory the service user can reach (deleted with the cluster).
    pool_dir = failover.directory.parent / "follower-pool"
    bouncer = cluster.local.bouncer("rw", [replica])
    bouncer = dataclasses.replace(bouncer, directory=pool_dir, port=port, process=None)
    bouncer.write_config()
    # As in the container: the follower and its PgBouncer run as the service user.
    user = service_user()
    as_user = [] if user.is_current else ["setpriv", f"--reuid={user.uid}",
                                          f"--regid={user.gid}", "--init-groups", "--"]
    python = patroni_command(user)[0][0]
    follower = subprocess.Popen(
        [*as_user, python, str(Path(patroni_follow.__file__)), "--role", "rw",
         "--config", str(bouncer.config_path), "--dbname", cluster.state.dbname,
         "--members", ",".join(cluster.api_endpoint(n) for n in cluster.state.nodes),
         "--cafile", str(cluster.local.tls.ca_cert), "--interval", "0.5",
         "--", find_pgbouncer(), str(bouncer.config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    dsn = cluster.local.dsn(port=port, connect_timeout=2)
    try:
        try:
            wait_until(lambda: server_of(dsn) == (cluster.state.host(str(leader)), False), 30,
                       "the follower's pool on the leader")
        except AssertionError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(follower.pid, signal.SIGTERM)
            output = follower.communicate(timeout=10)[0].decode(errors="replace")
            raise AssertionError(f"follower output:\n{output}") from None
        assert bouncer.configured_hosts(cluster.state.dbname) == [
            cluster.state.host(str(leader))]
        assert stat.S_IMODE(bouncer.config_path.stat().st_mode) == 0o600
        # And a running PgBouncer is re-pointed (rewrite + SIGHUP) when the leader changes.
        result = failover.cli("ha", "switchover")
        assert result.code == 0, result.out + result.err
        new_leader = failover.cluster.state.host(str(failover.cluster.leader()))
        assert new_leader != cluster.state.host(str(leader))
        wait_until(lambda: server_of(dsn) == (new_leader, False), 30,
                   "the follower's pool on the new leader")
        assert follower.poll() is None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(follower.pid, signal.SIGTERM)
        try:
            follower.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(follower.pid, signal.SIGKILL)
            follower.wait(10)
        bouncer.stop()


@pytest.mark.timeout(120)
def test_a_node_behind_a_command_prefix_on_an_explicit_address() -> None:
    """What a node in a network namespace of its own needs: its processes start behind a
    command prefix (here `env`, which execs like `ip netns exec` does) as the service user, on
    the address given, and stop by the pid recorded."""
    from devcluster import kill_leftovers
    from patronicluster import free_failover_port, require_failover_binaries

    from sagaz.ha.osuser import service_user
    from sagaz.ha.patroni_cluster import PatroniCluster

    require_failover_binaries()
    parent = Path(tempfile.mkdtemp(prefix="sagaz-failover-test-"))
    parent.chmod(0o755)  # the servers run as an unprivileged user when the tests run as root
    cluster = PatroniCluster.new(parent / "cluster", nodes=1, base_port=free_failover_port(5),
                                 hosts=["127.0.0.5"], prefixes={"node0": ["env"]})
    try:
        cluster.up()
        assert cluster.leader() == "node0"
        assert server_of(cluster.local.dsn(port=cluster.state.rw_port)) == ("127.0.0.5", False)
        for daemon in (cluster.etcd("node0"), cluster.patroni("node0")):
            pid = daemon.pid
            assert pid is not None
            assert os.stat(f"/proc/{pid}").st_uid == service_user().uid
            assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] != b"env"
    finally:
        cluster.down(purge=True)
        kill_leftovers(parent)
        shutil.rmtree(parent, ignore_errors=True)
    assert cluster.running_parts() == []


@pytest.mark.timeout(120)
def test_a_dead_patroni_and_etcd_member_are_started_again(failover: FailoverCluster) -> None:
    """A replica node's Patroni and etcd member die (SIGKILL); the supervisor starts them
    again after revive_after seconds and the node streams again."""
    cluster = failover.cluster
    leader = cluster.leader()
    node = next(n for n in cluster.state.nodes if n != leader)
    before = {d.name: d.pid for d in (cluster.patroni(node), cluster.etcd(node))}
    for pid in before.values():
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: all(d.pid not in (None, before[d.name])
                           for d in (cluster.patroni(node), cluster.etcd(node))), 30,
               f"{node}'s Patroni and etcd running again")
    assert time.monotonic() - killed >= 4  # revive_after (5 s) less a pass of slack
    status = _healthy_status(failover, timeout=60)
    members = {m["name"]: m for m in status["members"]}  # type: ignore[attr-defined]
    assert members[node]["state"] == "streaming" and status["leader"] == leader
    assert "had died: started it again" in (failover.directory / "supervisor.log").read_text()
