"""`sagaz dev` around the happy path: restarting one part, a directory whose name needs quoting, a
creation that fails midway, two commands at once on one directory, directories that cannot be."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from devcluster import (
    DevCluster,
    dev_cluster,
    free_base_port,
    kill_leftovers,
    processes_of,
    require_cluster_binaries,
    run_cli,
)

from sagaz.ha.dirlock import directory_lock
from sagaz.ha.postgres import find_bindir


@pytest.fixture
def parent() -> Iterator[Path]:
    """A directory the servers' OS user can enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="sagaz-ha-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for cluster_json in list(path.glob("**/cluster.json")):
            run_cli("dev", "down", "--purge", "--dir", str(cluster_json.parent))
        kill_leftovers(path)
        shutil.rmtree(path, ignore_errors=True)


def _pids(dev: DevCluster) -> dict[str, int | None]:
    cluster = dev.cluster
    pids = {n: cluster.node(n).pid for n in cluster.state.nodes}
    pids.update({f"pgbouncer-{r}": cluster.bouncer(r).pid for r in ("rw", "ro")})
    return pids


def _write_through_the_pool(dev: DevCluster) -> None:
    url = dev.cluster.env()["SAGAZ_STORAGE_URL"]
    deadline = time.monotonic() + 20
    while True:
        try:
            with psycopg.connect(url, autocommit=True, prepare_threshold=None,
                                 connect_timeout=5) as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS restart_probe (n int)")
                conn.execute("INSERT INTO restart_probe VALUES (1)")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _streaming(dev: DevCluster, replica: str) -> bool:
    with psycopg.connect(dev.cluster.node_dsn(dev.cluster.state.primary), autocommit=True,
                         connect_timeout=5) as conn:
        rows = conn.execute("SELECT application_name, state FROM pg_stat_replication").fetchall()
    return (replica, "streaming") in rows


@pytest.mark.slow
def test_restart_restarts_one_node_or_pool_and_leaves_the_rest_running() -> None:
    with dev_cluster(replicas=1) as dev:
        for name in ("node1", "pgbouncer-ro", "pgbouncer-rw", "node0"):
            before = _pids(dev)
            result = dev.cli("dev", "restart", name)
            assert result.code == 0, result.out + result.err
            assert f"restarted {name} in " in result.out
            after = _pids(dev)
            assert after[name] is not None and after[name] != before[name], (name, after)
            assert {k: v for k, v in after.items() if k != name} == \
                {k: v for k, v in before.items() if k != name}, name
            _write_through_the_pool(dev)
        deadline = time.monotonic() + 20
        while not _streaming(dev, "node1"):
            assert time.monotonic() < deadline, "node1 does not stream again"
            time.sleep(0.2)
        assert dev.cli("dev", "status").code == 0
        unknown = dev.cli("dev", "restart", "node9")
        assert unknown.code == 2
        assert "Traceback" not in unknown.err
        assert "node0, node1, pgbouncer-rw, pgbouncer-ro" in " ".join(unknown.err.split())


@pytest.mark.slow
def test_a_directory_with_an_apostrophe_works(parent: Path) -> None:
    require_cluster_binaries()
    directory = parent / "o'brien" / "cluster"
    directory.parent.mkdir(mode=0o755)
    up = run_cli("dev", "up", "--dir", str(directory), "--base-port", str(free_base_port(1)))
    assert up.code == 0, up.out + up.err
    status = run_cli("dev", "status", "--dir", str(directory))
    assert status.code == 0, status.out + status.err
    assert run_cli("dev", "down", "--purge", "--dir", str(directory)).code == 0


def _failing_bindir(parent: Path) -> Path:
    """The PostgreSQL binaries, except a pg_ctl that fails: `up` fails after initdb."""
    fake = parent / "bin"
    fake.mkdir(mode=0o755)
    for tool in find_bindir().iterdir():
        (fake / tool.name).symlink_to(tool)
    (fake / "pg_ctl").unlink()
    (fake / "pg_ctl").write_text("#!/bin/sh\necho 'pg_ctl: refused by the test' >&2\nexit 1\n")
    (fake / "pg_ctl").chmod(0o755)
    return fake


@pytest.mark.slow
def test_a_failed_up_leaves_nothing_half_created_and_a_second_up_completes(
    parent: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_cluster_binaries()
    directory = parent / "cluster"
    base = free_base_port(1)
    monkeypatch.setenv("SAGAZ_PG_BINDIR", str(_failing_bindir(parent)))
    failed = run_cli("dev", "up", "--dir", str(directory), "--base-port", str(base))
    assert failed.code == 3, failed.out + failed.err
    assert "refused by the test" in failed.err and "Traceback" not in failed.err
    assert not directory.exists()
    assert processes_of(directory) == []
    monkeypatch.delenv("SAGAZ_PG_BINDIR")
    again = run_cli("dev", "up", "--dir", str(directory), "--base-port", str(base))
    assert again.code == 0, again.out + again.err
    assert "creating the local cluster" in again.out


@pytest.mark.slow
def test_two_ups_on_one_directory_at_once_take_turns(parent: Path) -> None:
    require_cluster_binaries()
    directory = parent / "cluster"
    directory.mkdir()
    base = free_base_port(1)
    logs = [parent / "up-1.log", parent / "up-2.log"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAZ_")}
    with directory_lock(directory):
        ups = [subprocess.Popen(
            [sys.executable, "-m", "sagaz", "dev", "up", "--dir", str(directory),
             "--base-port", str(base)], env=env, stdout=log.open("w"),
            stderr=subprocess.STDOUT) for log in logs]
        deadline = time.monotonic() + 30
        while not all("waiting for another sagaz command" in log.read_text() for log in logs):
            assert time.monotonic() < deadline, [log.read_text() for log in logs]
            assert all(up.poll() is None for up in ups), [log.read_text() for log in logs]
            time.sleep(0.05)
        assert not (directory / "cluster.json").exists()  # nobody went ahead
    codes = [up.wait(timeout=120) for up in ups]
    outputs = [log.read_text() for log in logs]
    assert codes == [0, 0], outputs
    assert sorted("creating the local cluster" in o for o in outputs) == [False, True], outputs
    assert sum("already up" in o for o in outputs) == 1, outputs
    assert run_cli("dev", "status", "--dir", str(directory)).code == 0


@pytest.mark.parametrize("where", ["/proc/sagaz-cluster", "/dev/null/cluster"])
def test_up_in_a_directory_that_cannot_be_created_is_one_line_and_exit_2(where: str) -> None:
    result = run_cli("dev", "up", "--dir", where)
    assert result.code == 2, result.out + result.err
    assert "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert f"cannot create the cluster directory {where}" in result.err
    assert "--dir" in result.err
