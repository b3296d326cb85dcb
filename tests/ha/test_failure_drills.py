"""Failure drills on the local cluster under a steady saga load through pgbouncer-rw: a replica
killed, the primary restarted (fast and immediate), PgBouncer restarted, partition maintenance,
a manual failover. Each drill proves that every acknowledged saga is on the primary, completed,
with no step run twice, and prints the gap (the longest time no saga completed).

Bounded: one cluster for the module, each load runs a few seconds at 150 sagas/s on loopback.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from devcluster import DevCluster, dev_cluster
from steady_load import SteadyLoad, verify_on_primary

RATE = 150.0

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dev() -> Iterator[DevCluster]:
    with dev_cluster(replicas=1) as cluster:
        yield cluster


def _primary_dsn(dev: DevCluster) -> str:
    return dev.cluster.env()["SAGAZ_DATABASE_URL"]


def _drill(dev: DevCluster, name: str, disrupt: Callable[[], Any], *, settle: float = 2.0,
           url: str | None = None) -> float:
    """Run ``disrupt()`` one second into a steady saga load (through pgbouncer-rw, or ``url``),
    let the load go on for ``settle`` seconds, then prove that no saga failed, every one
    acknowledged is on the primary, completed, with no step run twice. Returns the gap: the
    longest time without a completed saga from the disruption on."""
    with SteadyLoad(url or dev.cluster.env()["SAGAZ_STORAGE_URL"], rate=RATE) as load:
        time.sleep(1.0)
        started = time.perf_counter()
        disrupt()
        time.sleep(settle)
        report = load.stop()
    gap = report.longest_gap(after=started - 1)
    print(f"\n[drill] {name}: {len(report.completed)} sagas completed, longest gap {gap:.2f} s, "
          f"{len(report.errors)} errors")
    assert report.errors == []
    verify_on_primary(_primary_dsn(dev), report)
    return gap


def test_replica_killed_writes_never_fail_and_reads_continue(dev: DevCluster) -> None:
    ro_url = dev.cluster.env()["SAGAZ_ANALYTICS_URL"]
    replica = dev.cluster.replicas[0]
    read_failures: list[float] = []

    def kill_replica_and_keep_reading() -> None:
        pid = replica.pid
        assert pid is not None
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        # Reads through the read pool: they may fail until the supervisor drops the dead replica
        # (within its 1 s check), then the pool serves from the primary.
        while time.monotonic() - killed_at < 5:
            try:
                with psycopg.connect(ro_url, connect_timeout=2, autocommit=True) as conn:
                    conn.execute("SELECT count(*) FROM saga_executions")
            except psycopg.Error:
                read_failures.append(time.monotonic() - killed_at)
            time.sleep(0.1)

    _drill(dev, "replica SIGKILL", kill_replica_and_keep_reading, settle=0)
    assert all(t < 3.0 for t in read_failures), f"reads failed late: {read_failures}"
    with psycopg.connect(ro_url, connect_timeout=2) as conn:
        conn.execute("SELECT 1")
    result = dev.cli("ha", "rejoin", replica.name)
    assert result.code == 0, result.out + result.err


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_primary_restart_clients_recover_within_5_seconds(dev: DevCluster, mode: str) -> None:
    gap = _drill(dev, f"primary restart ({mode})", lambda: dev.cluster.primary.restart(mode))
    assert gap < 5.0


def test_pgbouncer_restart_loses_no_saga(dev: DevCluster) -> None:
    bouncer = dev.cluster.bouncer("rw")

    def restart() -> None:
        bouncer.stop(signal.SIGKILL)
        bouncer.start()

    assert _drill(dev, "pgbouncer-rw SIGKILL + start", restart) < 5.0


def test_partition_maintenance_under_load_drops_old_partitions(dev: DevCluster) -> None:
    dsn = _primary_dsn(dev)
    with psycopg.connect(dsn, autocommit=True) as conn:
        old = conn.execute(
            "SELECT create_saga_executions_partition((now() - interval '14 months')::date)"
        ).fetchone()
        assert old is not None
    actions: list[Any] = []

    def maintain() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '5s'")
            actions.extend(conn.execute(
                "SELECT action, partition_name FROM maintain_all_partitions()").fetchall())

    _drill(dev, "maintenance", maintain, settle=1.0)
    assert ("dropped", old[0]) in actions


def _promote(dev: DevCluster, target: str) -> None:
    result = dev.cli("ha", "promote", target)
    assert result.code == 0, result.out + result.err


def test_manual_failover_under_load_keeps_every_acknowledged_saga(dev: DevCluster) -> None:
    before = dev.cluster.state.primary
    target = dev.cluster.state.replicas[0]
    _drill(dev, "sagaz ha promote", lambda: _promote(dev, target))
    cluster = dev.cluster
    assert cluster.state.primary == target and before in cluster.state.replicas
    with psycopg.connect(cluster.env()["SAGAZ_DATABASE_URL"], autocommit=True) as conn:
        standby = conn.execute("SELECT count(*) FROM pg_stat_replication").fetchone()
    assert standby is not None and standby[0] == 1, "the old primary did not rejoin"


def test_a_multi_host_dsn_follows_the_primary_without_pgbouncer(dev: DevCluster) -> None:
    """libpq host lists with target_session_attrs=read-write: the storage finds the promoted
    node by itself after a failover, no proxy involved."""
    cluster = dev.cluster
    state = cluster.state
    hosts = ",".join(f"{state.host(n)}:{state.base_port}" for n in state.nodes)
    password = cluster.passwords["sagaz"]
    url = (f"postgresql://sagaz:{password}@{hosts}/{state.dbname}"
           "?target_session_attrs=read-write&connect_timeout=2&sslmode=verify-full"
           f"&sslrootcert={cluster.tls.ca_cert}")
    _drill(dev, "multi-host DSN across promote", lambda: _promote(dev, state.replicas[0]),
           url=url)
