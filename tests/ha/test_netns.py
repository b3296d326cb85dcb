"""The namespaces of the fault tests: nodes reach each other and the clients through the bridge;
a partition cuts a node off from its peers only, and lifts itself when its time is up; a cut link
cuts it off from everyone; destroying the topology leaves no namespace and no process."""

from __future__ import annotations

import subprocess

from netns import NETNS_DIR, pids_in, topology, wait_until


def test_nodes_and_clients_reach_each_other_until_a_fault_separates_them() -> None:
    with topology(3) as net:
        assert all(net.reaches(a, b) for a in (None, 0, 1, 2) for b in (None, 0, 1, 2)
                   if a != b)

        net.partition(0, seconds=2)
        assert net.partitioned_from(0) == [net.address(1), net.address(2)]
        assert not net.reaches(0, 1) and not net.reaches(2, 0)
        assert net.reaches(None, 0) and net.reaches(0, None), "clients still reach the node"
        assert net.reaches(1, 2), "the majority side still works"
        # The kernel lifts the partition on time: nothing has to remember to heal it.
        took = wait_until(lambda: net.reaches(0, 1) and net.reaches(2, 0), 4, "partition expiry")
        assert net.partitioned_from(0) == []
        assert took < 3.0

        with net.partitioned(1, seconds=60):
            assert not net.reaches(1, 2)
        assert net.reaches(1, 2), "the block healed it"

        net.cut(2, seconds=1)
        assert not net.reaches(None, 2) and not net.reaches(0, 2)
        wait_until(lambda: net.reaches(None, 2), 3, "link up again")


def test_the_topology_leaves_nothing_behind_even_when_the_test_fails() -> None:
    names: list[str] = []
    sleeper: subprocess.Popen[bytes] | None = None
    try:
        with topology(2) as net:
            names = net.namespaces
            sleeper = subprocess.Popen([*net.prefix(1), "sleep", "300"])
            wait_until(lambda: pids_in(net.namespace(1)) == [sleeper.pid], 5, "sleeper started")
            raise RuntimeError("the test failed")
    except RuntimeError:
        pass
    assert sleeper is not None and sleeper.wait(5) == -9
    assert names and not [n for n in names if (NETNS_DIR / n).exists()]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [n for n in names if n in listed]
