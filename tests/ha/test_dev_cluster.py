"""`sagaz dev up --ha` from a clean directory: the pools serve reads and writes where they should,
the reader cannot write, secrets stay private, `dev status` and `dev env` tell the truth."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from devcluster import DevCluster, dev_cluster, free_base_port, require_cluster_binaries, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dev() -> Iterator[DevCluster]:
    with dev_cluster(replicas=1) as cluster:
        yield cluster


def _env(dev: DevCluster) -> dict[str, str]:
    result = dev.cli("dev", "env")
    assert result.code == 0, result.err
    found = {}
    for line in result.out.splitlines():
        export, assignment = line.split(" ", 1)
        assert export == "export"
        key, value = shlex.split(assignment)[0].split("=", 1)
        found[key] = value
    return found


def _connect(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    # Through PgBouncer in transaction mode: no prepared statements.
    return psycopg.connect(url, autocommit=True, prepare_threshold=None, connect_timeout=5,
                           **kwargs)


def test_up_reports_the_urls_and_the_time_and_a_second_up_changes_nothing(
    dev: DevCluster,
) -> None:
    out = dev.up.out
    for stage in ("initdb node0", "pg_basebackup node1", "pgbouncer-rw", "pgbouncer-ro"):
        assert stage in out
    for key in ("SAGAZ_STORAGE_URL=", "SAGAZ_ANALYTICS_URL=", "SAGAZ_DATABASE_URL="):
        assert key in out
    assert "generated passwords" in out and "0600" in out
    assert "up in " in out and "supervisor: pid" in out
    print(next(line for line in out.splitlines() if line.startswith("up in ")))
    again = dev.cli("dev", "up", "--ha")
    assert again.code == 0, again.err
    assert "already up" in again.out and "nothing to do" in again.out
    assert "SAGAZ_STORAGE_URL=" in again.out


def test_env_prints_exports_for_the_pools_and_the_primary(dev: DevCluster) -> None:
    env = _env(dev)
    port = dev.base_port
    assert set(env) == {"SAGAZ_STORAGE_URL", "SAGAZ_ANALYTICS_URL", "SAGAZ_DATABASE_URL"}
    # Every URL verifies the server against the cluster CA (TLS on every hop).
    tls = f"?sslmode=verify-full&sslrootcert={dev.directory / 'tls' / 'ca.crt'}"
    assert env["SAGAZ_STORAGE_URL"].endswith(f"@127.0.0.1:{port + 1000}/sagaz{tls}")
    assert env["SAGAZ_ANALYTICS_URL"].endswith(f"@127.0.0.1:{port + 1001}/sagaz{tls}")
    assert env["SAGAZ_DATABASE_URL"].endswith(f"@127.0.0.1:{port}/sagaz{tls}")


def test_writes_go_through_the_write_pool_and_reads_come_from_the_replica(
    dev: DevCluster,
) -> None:
    env = _env(dev)
    with _connect(env["SAGAZ_STORAGE_URL"]) as rw:
        rw.execute("CREATE TABLE IF NOT EXISTS ha_probe (id int PRIMARY KEY, note text)")
        rw.execute("INSERT INTO ha_probe VALUES (1, 'written through pgbouncer-rw')")
        assert rw.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    deadline = time.monotonic() + 10
    with _connect(env["SAGAZ_ANALYTICS_URL"]) as ro:
        while True:
            try:
                row = ro.execute("SELECT note FROM ha_probe WHERE id = 1").fetchone()
            except psycopg.errors.UndefinedTable:
                row = None  # the CREATE TABLE has not been replayed yet
            if row is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert row == ("written through pgbouncer-rw",)
        where = ro.execute("SELECT pg_is_in_recovery(), host(inet_server_addr())").fetchone()
        assert where == (True, "127.0.0.2")  # node1, the replica


def test_the_reader_cannot_write_through_the_read_pool_nor_on_the_primary(
    dev: DevCluster,
) -> None:
    env = _env(dev)
    with _connect(env["SAGAZ_ANALYTICS_URL"]) as ro, pytest.raises(
            psycopg.errors.ReadOnlySqlTransaction):
        ro.execute("CREATE TABLE reader_was_here (x int)")
    cluster = dev.cluster
    reader_on_primary = cluster.dsn(user="sagaz_reader")
    with _connect(reader_on_primary) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TABLE reader_was_here (x int)")


def test_secrets_are_private_and_no_connection_is_trusted(dev: DevCluster) -> None:
    secrets_file = dev.directory / "secrets.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    for role in ("rw", "ro"):
        userlist = dev.directory / f"pgbouncer-{role}" / "userlist.txt"
        assert stat.S_IMODE(userlist.stat().st_mode) == 0o600
    passwords = json.loads(secrets_file.read_text())
    cluster_json = (dev.directory / "cluster.json").read_text()
    assert not any(p in cluster_json for p in passwords.values())
    for node in ("node0", "node1"):
        hba = (dev.directory / node / "data" / "pg_hba.conf").read_text()
        rules = [line.split() for line in hba.splitlines()
                 if line.strip() and not line.lstrip().startswith("#")]
        # SCRAM for every connection that is accepted; TCP only over TLS (hostssl), a TCP
        # connection without it is rejected.
        assert rules and all(rule[-1] == "scram-sha-256" for rule in rules
                             if rule[0] != "hostnossl"), hba
        assert all(rule[0] in ("local", "hostssl") or rule[-1] == "reject" for rule in rules), hba
        assert "trust" not in hba


def test_partition_statistics_and_pg_stat_replication_as_the_design_guide_checks(
    dev: DevCluster,
) -> None:
    env = _env(dev)
    with _connect(env["SAGAZ_DATABASE_URL"]) as conn:
        tables = {row[0] for row in conn.execute(
            "SELECT table_name FROM get_partition_statistics()")}
    assert {"saga_executions", "saga_outbox", "saga_audit_log"} <= tables
    cluster = dev.cluster
    with _connect(cluster.node_dsn("node0")) as admin:
        rows = admin.execute(
            "SELECT application_name, state FROM pg_stat_replication").fetchall()
    assert ("node1", "streaming") in rows


def test_status_json_has_roles_lag_pools_and_partitions(dev: DevCluster) -> None:
    result = dev.cli("dev", "status", "--json")
    assert result.code == 0, result.out + result.err
    status = json.loads(result.out)
    assert status["healthy"] is True
    assert {n["name"]: n["role"] for n in status["nodes"]} == {"node0": "primary",
                                                              "node1": "replica"}
    [replica] = status["replication"]
    assert replica["name"] == "node1" and replica["state"] == "streaming"
    assert isinstance(replica["replay_lag_bytes"], int)
    node1 = next(n for n in status["nodes"] if n["name"] == "node1")
    assert node1["replay_delay_seconds"] is not None
    assert status["pools"]["rw"]["running"] and status["pools"]["ro"]["running"]
    assert status["pools"]["rw"]["hosts"] == ["127.0.0.1"]
    assert status["pools"]["ro"]["hosts"] == ["127.0.0.2"]
    # The earlier tests went through both pools: SHOW POOLS / SHOW STATS have their rows.
    assert any(p["user"] == "sagaz" for p in status["pools"]["rw"]["pools"])
    assert status["pools"]["rw"]["stats"][0]["total_xact_count"] > 0
    assert status["partitions"]["saga_outbox"] >= 2
    assert status["supervisor_pid"]
    table = dev.cli("dev", "status")
    assert table.code == 0
    for text in ("primary", "replica", "streaming", "pgbouncer-ro", "partitions:", "healthy"):
        assert text in table.out


def test_up_names_the_port_in_use_and_creates_nothing() -> None:
    require_cluster_binaries()
    # Not tmp_path: pytest's base directory is 0700, which the postgres OS user may not enter
    # (dev up would refuse it before looking at ports).
    parent = Path(tempfile.mkdtemp(prefix="sagaz-ha-test-"))
    try:
        parent.chmod(0o755)
        base = free_base_port(2)
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", base + 1001))
            squatter.listen()
            result = run_cli("dev", "up", "--ha", "--dir", str(parent / "c"), "--base-port",
                             str(base))
        assert result.code == 2
        assert f"port {base + 1001} on 127.0.0.1 (pgbouncer-ro) is in use" in result.err
        assert "--base-port" in result.err
        assert not (parent / "c").exists()
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_up_refuses_a_directory_the_service_user_cannot_enter(tmp_path: Path) -> None:
    require_cluster_binaries()
    if os.getuid() != 0:
        pytest.skip("only as root do the servers run as another OS user")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    result = run_cli("dev", "up", "--dir", str(private / "c"))
    assert result.code == 2
    assert "may not enter" in result.err and f"chmod o+x {private}" in result.err
    assert not (private / "c").exists()


def test_commands_on_a_directory_without_cluster_say_how_to_start_one(tmp_path: Path) -> None:
    result = run_cli("dev", "status", "--dir", str(tmp_path))
    assert result.code == 2 and "sagaz dev up --ha" in result.err
    down = run_cli("dev", "down", "--dir", str(tmp_path / "none"))
    assert down.code == 0 and "nothing to stop" in down.out


def test_down_purge_refuses_a_directory_that_holds_no_cluster(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    result = run_cli("dev", "down", "--purge", "--dir", str(tmp_path))
    assert result.code == 2 and "not deleting" in result.err
    assert (tmp_path / "precious.txt").exists()

