"""Faults under a steady saga load on a Patroni cluster whose nodes live in network namespaces
(tests/ha/netns.py), judged by the set checker (tests/ha/set_checker.py).

One scenario: wait until the cluster is healthy; start two loads from the client namespace, one
through pgbouncer-rw and one through the libpq multi-host DSN (target_session_attrs=read-write);
inject the fault into the current leader; wait for a leader that serves; let the load run on;
stop it; wait until the old leader is a streaming replica again (Patroni rewinds it); let
recovery finish the sagas the fault interrupted; check both histories on the final leader.

Used by tests/ha/test_failover_faults.py (assertions) and tests/benchmarks (medians).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from netns import Topology, run_in, wait_until
from set_checker import SetResult, check
from steady_load import SteadyLoad, recover_in_flight

RATE = 100.0
"""Sagas per second of each load: one every 10 ms."""
LEASE_SECONDS = 5.0
"""The loads' lease: recovery may take an interrupted saga over this long after its client gave
up on it (short, so that the check need not wait long)."""
CLIENT_PATIENCE = 30.0
"""How long the storage retries a lost connection before run() raises: long enough to ride
through an election (ttl 20)."""


class FaultCluster(Protocol):
    """What the scenarios need of a cluster in namespaces."""

    topology: Topology
    nodes: list[str]
    sync: bool

    def index(self, node: str) -> int: ...
    def members(self) -> dict[str, dict[str, Any]]:
        """Patroni's GET /cluster members by name, as a majority of the members sees the
        cluster (asked from the client namespace); empty when no majority agrees."""
    def postmaster_pid(self, node: str) -> int | None: ...
    def patroni_pid(self, node: str) -> int | None: ...
    def etcd_pid(self, node: str) -> int | None: ...
    def switchover(self) -> str:
        """A planned switchover to any healthy replica; what the command printed."""
    def pool_url(self) -> str: ...
    def multi_host_url(self) -> str: ...
    def leader_conninfo(self) -> str:
        """Straight to the current leader, for the checker."""
    def patroni_log(self, node: str) -> str:
        """What ``node``'s Patroni logged so far."""


def leader_of(members: dict[str, dict[str, Any]]) -> str | None:
    for name, member in members.items():
        if member.get("role") in ("leader", "standby_leader") and member.get("state") == "running":
            return name
    return None


def healthy(cluster: FaultCluster) -> bool:
    """A running leader, every other member streaming from it on its timeline (and, in sync
    mode, one of them its synchronous standby)."""
    members = cluster.members()
    leader = leader_of(members)
    if leader is None or len(members) != len(cluster.nodes):
        return False
    timeline = members[leader].get("timeline")
    replicas = [m for n, m in members.items() if n != leader]
    if not all(m.get("state") == "streaming" and m.get("timeline") == timeline
               for m in replicas):
        return False
    return not cluster.sync or any(m.get("role") == "sync_standby" for m in replicas)


# -- the faults -------------------------------------------------------------------------------
# Each gets the cluster and its leader at the time of the fault and returns when the fault has
# been injected (and, for a timed one, lifted again).


def kill_postmaster(cluster: FaultCluster, leader: str) -> None:
    pid = cluster.postmaster_pid(leader)
    assert pid is not None, f"no postmaster on {leader}"
    os.kill(pid, signal.SIGKILL)


def crash_node(cluster: FaultCluster, leader: str) -> None:
    """The node dies whole: its Patroni, PostgreSQL and etcd member at once. Nobody repairs it:
    the supervisor starts its etcd member and Patroni again after ``revive_after`` (30 s, longer
    than ttl), as a service manager would, and Patroni rewinds it into a replica."""
    pids = [cluster.patroni_pid(leader), cluster.postmaster_pid(leader), cluster.etcd_pid(leader)]
    assert all(pids), f"{leader} is not whole: {pids}"
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]


PARTITION_SECONDS = 30.0


def partition_leader(cluster: FaultCluster, leader: str) -> None:
    """The leader loses its peers (clients still reach it) for 30 s, then the net heals."""
    index = cluster.index(leader)
    with cluster.topology.partitioned(index, PARTITION_SECONDS + 5):
        time.sleep(PARTITION_SECONDS)


def switchover(cluster: FaultCluster, leader: str) -> None:
    cluster.switchover()


DCS_OUTAGE_SECONDS = 15.0


def stop_etcd(cluster: FaultCluster, leader: str) -> None:
    """Every etcd member SIGSTOPped for 15 s, then SIGCONTinued (also if anything fails)."""
    pids = [p for p in (cluster.etcd_pid(n) for n in cluster.nodes) if p]
    assert len(pids) == len(cluster.nodes)
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(DCS_OUTAGE_SECONDS)
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


FAULTS: dict[str, Callable[[FaultCluster, str], None]] = {
    "postmaster SIGKILL": kill_postmaster,
    "node crash": crash_node,
    "partition 30 s": partition_leader,
    "switchover": switchover,
    "etcd SIGSTOP 15 s": stop_etcd,
}


REWIND = "running pg_rewind from"
"""What Patroni logs when it rewinds a former leader onto the new leader's timeline."""


# -- one scenario -----------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    scenario: str
    old_leader: str
    new_leader: str
    leader_changed_after: float | None
    """Seconds from the fault until Patroni named another leader (None: it kept its leader,
    e.g. restarted the killed postmaster in place)."""
    rejoined_after: float
    """Seconds from the fault until every member streamed from the leader again."""
    rewound: bool = False
    """Whether Patroni ran pg_rewind on the old leader to make it a replica again."""
    results: dict[str, SetResult] = field(default_factory=dict)
    """By load: "pool" (pgbouncer-rw), "multi-host"."""

    def lines(self) -> list[str]:
        moved = ("kept its leader" if self.leader_changed_after is None else
                 f"{self.old_leader} -> {self.new_leader} after "
                 f"{self.leader_changed_after:.1f} s")
        head = (f"== {self.scenario}: {moved}; healthy again after {self.rejoined_after:.1f} s"
                f"{' (old leader rewound)' if self.rewound else ''}")
        return [head, *(f"   {load:10} {r.line()}" for load, r in self.results.items())]


class LeaderWatch:
    """Polls the cluster's leader from the fault on, in a thread (a fault may block the caller
    for its whole length): when did Patroni name another one?"""

    def __init__(self, cluster: FaultCluster, old: str, since: float, interval: float = 0.2):
        self.cluster, self.old, self.since, self.interval = cluster, old, since, interval
        self.changed_after: float | None = None
        self.new: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set() and self.changed_after is None:
            with contextlib.suppress(Exception):  # an unanswered poll is just a missed sample
                leader = leader_of(self.cluster.members())
                if leader is not None and leader != self.old:
                    self.changed_after, self.new = time.perf_counter() - self.since, leader
            self._stop.wait(self.interval)

    def __enter__(self) -> LeaderWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@contextlib.contextmanager
def loads(cluster: FaultCluster, rate: float = RATE) -> Iterator[dict[str, SteadyLoad]]:
    """The two loads of a scenario, from the client namespace."""
    ns = cluster.topology.switch
    running = {
        "pool": SteadyLoad(cluster.pool_url(), rate=rate, retry_timeout=CLIENT_PATIENCE,
                           netns=ns, lease_seconds=LEASE_SECONDS),
        "multi-host": SteadyLoad(cluster.multi_host_url(), rate=rate,
                                 retry_timeout=CLIENT_PATIENCE, netns=ns,
                                 lease_seconds=LEASE_SECONDS),
    }
    with contextlib.ExitStack() as stack:
        for load in running.values():
            stack.enter_context(load)
        yield running


def run_scenario(cluster: FaultCluster, name: str, *, rate: float = RATE, settle: float = 3.0,
                 serving_within: float = 60.0, rejoin_within: float = 120.0) -> ScenarioResult:
    fault = FAULTS[name]
    wait_until(lambda: healthy(cluster), rejoin_within, "a healthy cluster before the fault",
               interval=0.5)
    old = leader_of(cluster.members())
    assert old is not None
    rewinds_before = cluster.patroni_log(old).count(REWIND)
    with loads(cluster, rate) as running:
        time.sleep(2.0)
        fault_at = time.perf_counter()
        with LeaderWatch(cluster, old, fault_at) as watch:
            fault(cluster, old)

            # A leader serves again when both loads acknowledge sagas started after the fault.
            def serving() -> bool:
                return leader_of(cluster.members()) is not None and all(
                    any(op.invoked > fault_at and op.status is not None
                        for op in list(load.history)) for load in running.values())

            wait_until(serving, serving_within, f"{name}: a leader serving the loads",
                       interval=0.2)
        time.sleep(settle)
        reports = {key: load.stop() for key, load in running.items()}
    wait_until(lambda: healthy(cluster), rejoin_within,
               f"{name}: the old leader {old} streaming again", interval=0.5)
    rejoined_after = time.perf_counter() - fault_at
    new = leader_of(cluster.members()) or "?"
    result = ScenarioResult(name, old, new, watch.changed_after, rejoined_after,
                            cluster.patroni_log(old).count(REWIND) > rewinds_before)
    ns = cluster.topology.switch
    # Both loads' interrupted sagas at once: each recovery first waits for their leases.
    with ThreadPoolExecutor(len(reports)) as pool:
        list(pool.map(lambda r: recover_in_flight(cluster.pool_url(), r,
                                                  lease_seconds=LEASE_SECONDS, netns=ns),
                      reports.values()))
    primary = cluster.leader_conninfo()
    for key, report in reports.items():
        result.results[key] = run_in(
            ns, lambda r=report, k=key: check(f"{name} / {k}", r, primary, fault=fault_at))
    return result
