"""Jepsen-style proof of automatic failover: a 3-node Patroni cluster in --sync mode, each node
(etcd member + Patroni + PostgreSQL) in a network namespace of its own, under two steady saga
loads (one saga every 10 ms through pgbouncer-rw, and as many through the libpq multi-host DSN),
one fault at a time:

1. SIGKILL of the leader's postmaster;
2. the leader's node crashing (Patroni, postmaster and etcd member SIGKILLed together; the
   supervisor starts them again after 30 s, as a service manager would);
3. the leader partitioned from the other two nodes for 30 s (clients still reach it);
4. a planned `sagaz ha switchover`;
5. every etcd member SIGSTOPped for 15 s (failsafe_mode keeps the leader).

After each, the old leader must stream from the new one again without help (Patroni rewinds it),
and the set checker must find on the final leader every saga whose run() returned, none lost,
no step run twice, nothing left unfinished after recovery. Each scenario prints its write gap,
sagas acknowledged, found, lost, duplicated and client errors. Timing bounds are generous
(the README's Failover table has the measured figures: tests/benchmarks/test_failover_benchmark.py).

One cluster for the module: the scenarios run in file order and each starts from whatever leader
the previous one left.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fault_scenarios import ScenarioResult, run_scenario
from nscluster import NamespacedCluster, namespaced_cluster

pytestmark = pytest.mark.slow

TTL = 20


@pytest.fixture(scope="module")
def sync_cluster() -> Iterator[NamespacedCluster]:
    with namespaced_cluster(sync=True) as cluster:
        yield cluster


def _judge(result: ScenarioResult) -> None:
    print("\n" + "\n".join(result.lines()))
    for load, checked in result.results.items():
        assert not checked.lost, f"{load}: acknowledged sagas lost: {checked.lost[:5]}"
        assert not checked.duplicated, f"{load}: steps ran twice: {checked.duplicated[:5]}"
        assert not checked.duplicated_events, \
            f"{load}: stored twice: {checked.duplicated_events[:5]}"
        assert not checked.unfinished, f"{load}: left unfinished: {checked.unfinished[:5]}"
        # The load ran all along: at least half of what it offered was acknowledged.
        assert checked.acknowledged >= 0.5 * checked.offered, checked.line()


# A fresh cluster (initdb, clones, migrations) comes first: the first test pays for it.
@pytest.mark.timeout(420)
def test_postmaster_kill(sync_cluster: NamespacedCluster) -> None:
    result = run_scenario(sync_cluster, "postmaster SIGKILL")
    _judge(result)


@pytest.mark.timeout(240)
def test_node_crash(sync_cluster: NamespacedCluster) -> None:
    result = run_scenario(sync_cluster, "node crash")
    _judge(result)
    assert result.new_leader != result.old_leader
    assert result.leader_changed_after is not None
    assert result.leader_changed_after <= 2 * (TTL + 5), "the target is ttl + 5 s"


@pytest.mark.timeout(240)
def test_partition_of_the_leader(sync_cluster: NamespacedCluster) -> None:
    result = run_scenario(sync_cluster, "partition 30 s")
    _judge(result)
    assert result.new_leader != result.old_leader
    assert result.leader_changed_after is not None
    assert result.leader_changed_after <= 2 * (TTL + 5), "the target is ttl + 5 s"


@pytest.mark.timeout(180)
def test_switchover(sync_cluster: NamespacedCluster) -> None:
    result = run_scenario(sync_cluster, "switchover")
    _judge(result)
    assert result.new_leader != result.old_leader
    for checked in result.results.values():
        assert checked.gap < 3 * 3.0, "the target is a write gap under 3 s"


@pytest.mark.timeout(180)
def test_etcd_outage_keeps_the_leader(sync_cluster: NamespacedCluster) -> None:
    result = run_scenario(sync_cluster, "etcd SIGSTOP 15 s")
    _judge(result)
    assert result.leader_changed_after is None, "failsafe_mode keeps the leader"
