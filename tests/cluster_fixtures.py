"""A local PostgreSQL cluster for tests (primary, streaming replica, pgbouncer-rw/ro), started
from the machine's binaries in a temporary directory on free loopback ports and always taken
down. Session-scoped ``local_cluster`` is shared by the tests that only read and write through
it; tests that kill or promote servers start their own (tests/ha/devcluster.py)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest

from sagaz.ha.addresses import find_free_base_port

if TYPE_CHECKING:
    from sagaz.ha.local import LocalCluster


def cluster_addresses(nodes: int, base: int) -> list[tuple[str, int]]:
    """The addresses a cluster of ``nodes`` servers on ``base`` listens on: a server per
    loopback address, pgbouncer-rw and -ro on 127.0.0.1."""
    return [*[(f"127.0.0.{i + 1}", base) for i in range(nodes)],
            ("127.0.0.1", base + 1000), ("127.0.0.1", base + 1001)]


def free_base_port(nodes: int) -> int:
    """A base port free on every address and port a cluster of ``nodes`` servers uses."""
    return find_free_base_port(33000, 13, functools.partial(cluster_addresses, nodes))


@contextmanager
def temporary_cluster(replicas: int) -> Iterator[LocalCluster]:
    from sagaz.ha.scratch_cluster import scratch_cluster

    with scratch_cluster(replicas, free_base_port(replicas + 1),
                         prefix="sagaz-test-cluster-") as cluster:
        yield cluster


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[LocalCluster]:
    """A primary with one streaming replica, shared by the whole session."""
    with temporary_cluster(replicas=1) as cluster:
        yield cluster
