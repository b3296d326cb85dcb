"""Helpers for the failover tests: a real cluster of ``sagaz dev up --ha --failover`` (etcd +
Patroni + PostgreSQL per node, pgbouncer-rw/ro, the supervisor) in a temporary directory, on
loopback ports nobody else holds, always taken down again (also when a test fails).

Without etcd, Patroni, the PostgreSQL server binaries or PgBouncer these tests fail under
CI=true (the CI installs them: .ci/run, the dev extra) and are skipped elsewhere.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from devcluster import CliResult, kill_leftovers, require_cluster_binaries, run_cli
from missing_service import fail_missing

from sagaz.ha.addresses import find_free_base_port
from sagaz.ha.patroni_cluster import (
    API_OFFSET,
    ETCD_CLIENT_OFFSET,
    ETCD_PEER_OFFSET,
    PatroniCluster,
)

OFFSETS = (0, API_OFFSET, ETCD_CLIENT_OFFSET, ETCD_PEER_OFFSET)


def require_failover_binaries() -> None:
    require_cluster_binaries()
    missing = [what for what, present in (
        ("etcd (apt-get install etcd-server)", shutil.which("etcd") is not None
         or os.path.exists("/usr/bin/etcd")),
        ("patroni (pip install 'sagaz[ha]')", importlib.util.find_spec("patroni") is not None))
        if not present]
    if missing:
        fail_missing(f"the failover tests need {', '.join(missing)}")


def free_failover_port(nodes: int) -> int:
    """A base port whose every port of a failover cluster of ``nodes`` nodes is free."""
    return find_free_base_port(36000, 17, lambda base: [
        *[(f"127.0.0.{i + 1}", base + offset) for i in range(nodes) for offset in OFFSETS],
        ("127.0.0.1", base + 1000), ("127.0.0.1", base + 1001)])


@dataclass
class FailoverCluster:
    directory: Path
    up: CliResult

    @property
    def cluster(self) -> PatroniCluster:
        """As cluster.json describes it now (the supervisor records the leader)."""
        return PatroniCluster.load(self.directory)

    def cli(self, *argv: str) -> CliResult:
        return run_cli(*argv, "--dir", str(self.directory))

    def pool_dsn(self) -> str:
        c = self.cluster
        return c.local.dsn(port=c.state.rw_port, connect_timeout=2)


@contextlib.contextmanager
def failover_cluster(*up_args: str, nodes: int = 3) -> Iterator[FailoverCluster]:
    require_failover_binaries()
    parent = Path(tempfile.mkdtemp(prefix="sagaz-failover-test-"))
    parent.chmod(0o755)  # the servers run as an unprivileged user when the tests run as root
    directory = parent / "cluster"
    try:
        # Dead daemons come back after 5 s (default 30): the revive test waits for it.
        result = run_cli("dev", "up", "--ha", "--failover", "--nodes", str(nodes),
                         "--revive-after", "5",
                         "--dir", str(directory), "--base-port", str(free_failover_port(nodes)),
                         *up_args)
        assert result.code == 0, result.out + result.err
        yield FailoverCluster(directory, result)
    finally:
        if (directory / "cluster.json").exists():
            run_cli("dev", "down", "--purge", "--dir", str(directory))
        kill_leftovers(parent)
        shutil.rmtree(parent, ignore_errors=True)


def server_of(dsn: str) -> tuple[str, bool]:
    """(address, in recovery) of the server a new connection to ``dsn`` reaches."""
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        row = conn.execute("SELECT host(inet_server_addr()), pg_is_in_recovery()").fetchone()
    assert row is not None
    return str(row[0]), bool(row[1])


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except (psycopg.Error, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:g} s: {what} (last: {last!r})")


class Writer:
    """Inserts a row through ``dsn`` until stopped and records, per acknowledged insert, when it
    returned: the longest time without one is the write gap."""

    def __init__(self, dsn: str, table: str) -> None:
        self.dsn, self.table = dsn, table
        self.acknowledged: list[tuple[int, float]] = []
        self.errors = 0

    def write_once(self, value: int) -> bool:
        try:
            with psycopg.connect(self.dsn, autocommit=True, prepare_threshold=None) as conn:
                conn.execute(f"INSERT INTO {self.table} (v) VALUES (%s)", (value,))
        except psycopg.Error:
            self.errors += 1
            return False
        self.acknowledged.append((value, time.monotonic()))
        return True

    def longest_gap(self) -> float:
        times = [t for _, t in self.acknowledged]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)
