"""`sagaz dev up --ha --failover`'s cluster with each node in a network namespace of its own:
node i's etcd member, Patroni and PostgreSQL run behind ``ip netns exec`` on node i's address
(tests/ha/netns.py); the pools, the supervisor, the CLI and the test's clients run in the switch
namespace, where they reach every node over the bridge as an application server would.

``namespaced_cluster()`` always takes everything down: ``sagaz dev down --purge`` first, then the
topology kills whatever is still inside its namespaces and deletes them.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from devcluster import CliResult, require_cluster_binaries, run_cli
from netns import SUBNET, Topology, run_in, topology

from sagaz.deploy.patroni import PatroniSettings
from sagaz.deploy.patroni_follow import agreed_view, fetch_views
from sagaz.ha.patroni_cluster import PatroniCluster

BASE_PORT = 5432
"""Each node has an address (and namespace) of its own: the standard port is free on all."""


class NamespacedCluster:
    """A :class:`fault_scenarios.FaultCluster` over a :class:`PatroniCluster`."""

    def __init__(self, net: Topology, directory: Path, *, sync: bool, nodes: int = 3):
        self.topology = net
        self.directory = directory
        self.sync = sync
        self.nodes = [f"node{i}" for i in range(nodes)]
        self.patroni = PatroniCluster.new(
            directory, nodes=nodes, base_port=BASE_PORT,
            settings=PatroniSettings(synchronous_mode=sync),
            hosts=[net.address(i) for i in range(nodes)],
            prefixes={n: net.prefix(i) for i, n in enumerate(self.nodes)},
            networks=[f"{SUBNET}.0/24"])

    # -- running things where the clients are ----------------------------------------------------

    def client(self, fn: Any, timeout: float = 60.0) -> Any:
        """``fn()`` from the client (switch) namespace."""
        return run_in(self.topology.switch, fn, timeout)

    def cli(self, *argv: str, timeout: float = 120.0) -> CliResult:
        """``sagaz ARGV --dir DIR`` in-process, from the client namespace."""
        result: CliResult = self.client(lambda: run_cli(*argv, "--dir", str(self.directory)),
                                        timeout)
        return result

    @property
    def state(self) -> PatroniCluster:
        """The cluster as cluster.json and secrets.json say now (the supervisor records the
        leader; `dev up` generated the passwords)."""
        return PatroniCluster.load(self.directory)

    # -- FaultCluster ----------------------------------------------------------------------------

    def index(self, node: str) -> int:
        return self.nodes.index(node)

    def members(self) -> dict[str, dict[str, Any]]:
        # As a majority of the members sees it: a partitioned leader goes on naming itself
        # until it notices, and it is the member the clients reach first.
        def agreed() -> dict[str, Any] | None:
            state = self.state
            views = fetch_views([state.api_endpoint(n) for n in self.nodes],
                                state.api_context(), 1.0)
            return agreed_view(views, len(self.nodes))

        document = self.client(agreed, 10)
        return {m["name"]: m for m in (document or {}).get("members", [])}

    def postmaster_pid(self, node: str) -> int | None:
        pid: int | None = self.state.local.node(node).pid
        return pid

    def patroni_pid(self, node: str) -> int | None:
        return self.state.patroni(node).pid

    def etcd_pid(self, node: str) -> int | None:
        return self.state.etcd(node).pid

    def switchover(self) -> str:
        result = self.cli("ha", "switchover")
        assert result.code == 0, result.out + result.err
        return result.out

    def pool_url(self) -> str:
        return str(self.state.local.env()["SAGAZ_STORAGE_URL"])

    def multi_host_url(self) -> str:
        return self.state.multihost_url()

    def patroni_log(self, node: str) -> str:
        path = self.state.node_dir(node) / "patroni.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def leader_conninfo(self) -> str:
        from fault_scenarios import leader_of

        leader = leader_of(self.members())
        assert leader is not None, "no leader to check"
        state = self.state
        return str(state.local.node_dsn(leader, user="sagaz", dbname=state.state.dbname))


@contextlib.contextmanager
def namespaced_cluster(*, sync: bool, nodes: int = 3) -> Iterator[NamespacedCluster]:
    """A running cluster of ``nodes`` namespaced nodes (``--sync`` when ``sync``)."""
    require_cluster_binaries()
    with topology(nodes) as net:
        parent = Path(tempfile.mkdtemp(prefix="sagaz-netns-"))
        parent.chmod(0o755)  # the servers run as an unprivileged user when the tests run as root
        cluster = NamespacedCluster(net, parent / "cluster", sync=sync, nodes=nodes)
        try:
            # The layout (addresses, prefixes) is the test's: `dev up` starts what it describes.
            cluster.patroni.local.save()
            up = cluster.cli("dev", "up", "--ha", "--failover", timeout=300)
            assert up.code == 0, up.out + up.err
            yield cluster
        finally:
            if (cluster.directory / "cluster.json").exists():
                with contextlib.suppress(Exception):
                    cluster.cli("dev", "down", "--purge", timeout=120)
            shutil.rmtree(parent, ignore_errors=True)
