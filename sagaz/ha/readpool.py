"""pgbouncer-ro over the replicas that answer: probe every node, and when the set of healthy
replicas changed, rewrite pgbouncer-ro's [databases] host list to them (or to the primary when
there is none) and RELOAD it. The supervisor (:mod:`sagaz.ha.supervisor`, which explains why it
works this way) runs one pass a second; promote and rejoin run one after they changed the roles.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import psycopg

from sagaz.ha.health import CONNECT_TIMEOUT, IS_IN_RECOVERY
from sagaz.ha.local import READER_USER, LocalCluster

__all__ = [
    "CHECK_TIMEOUT", "Probe", "ReadPoolChange", "probe_nodes", "read_pool_targets",
    "reconcile_read_pool", "refresh_read_pool",
]

logger = logging.getLogger(__name__)

CHECK_TIMEOUT = 1.0
"""Seconds a node has to accept a login and answer: beyond it, it counts as down."""


@dataclass(frozen=True)
class Probe:
    node: str
    in_recovery: bool | None
    """True: a replica; False: a primary; None: did not answer (``reason`` says why)."""
    reason: str | None = None


@dataclass(frozen=True)
class ReadPoolChange:
    before: list[str]
    after: list[str]
    """Node names pgbouncer-ro now balances over."""
    probes: list[Probe]


async def probe_nodes(cluster: LocalCluster, check_timeout: float = CHECK_TIMEOUT) -> list[Probe]:
    """Probe every node concurrently, each within ``check_timeout`` seconds."""
    return list(await asyncio.gather(*(_probe(cluster, n, check_timeout)
                                       for n in cluster.state.nodes)))


async def _probe(cluster: LocalCluster, node: str, check_timeout: float) -> Probe:
    # As the read pool's own user, to the application database: the login PgBouncer will make.
    conninfo = cluster.node_dsn(node, user=READER_USER, dbname=cluster.state.dbname,
                                connect_timeout=CONNECT_TIMEOUT,
                                application_name="sagaz-supervisor")
    try:
        async with asyncio.timeout(check_timeout):
            conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True,
                                                         prepare_threshold=None)
            async with conn:
                row = await (await conn.execute(IS_IN_RECOVERY)).fetchone()
    except TimeoutError:
        return Probe(node, None, f"no answer within {check_timeout:g} s")
    except psycopg.Error as exc:
        return Probe(node, None, " ".join(str(exc).split()) or type(exc).__name__)
    return Probe(node, bool(row and row[0]))


def read_pool_targets(cluster: LocalCluster, probes: list[Probe]) -> list[str]:
    """The nodes pgbouncer-ro should balance over: the healthy replicas; else the node that
    answers as a primary (the configured one first); else the configured primary."""
    replicas = [p.node for p in probes if p.in_recovery]
    if replicas:
        return replicas
    primaries = sorted((p.node for p in probes if p.in_recovery is False),
                       key=lambda n: n != cluster.state.primary)
    return primaries[:1] or [cluster.state.primary]


async def reconcile_read_pool(cluster: LocalCluster,
                              check_timeout: float = CHECK_TIMEOUT) -> ReadPoolChange | None:
    """One pass: probe, and when pgbouncer-ro's host list differs from the healthy replicas,
    rewrite it and RELOAD. Returns the change, or None when the list was right."""
    probes = await probe_nodes(cluster, check_timeout)
    targets = read_pool_targets(cluster, probes)
    bouncer = cluster.bouncer("ro", targets)
    by_host = {cluster.state.host(n): n for n in cluster.state.nodes}
    before = [by_host.get(h, h) for h in bouncer.configured_hosts(cluster.state.dbname)]
    if before == targets:
        return None
    bouncer.reload()
    change = ReadPoolChange(before, targets, probes)
    down = {p.node: p.reason for p in probes if p.in_recovery is None}
    # A node taken out is news (warning); one put back, or a promotion followed, is not.
    log = logger.warning if set(before) - set(targets) and down else logger.info
    log("pgbouncer-ro now balances over %s (was %s); not answering: %s",
                   ",".join(targets), ",".join(before) or "-",
                   "; ".join(f"{n}: {r}" for n, r in down.items()) or "none",
                   extra={"action": "read_pool_changed", "before": before, "after": targets})
    return change


def refresh_read_pool(cluster: LocalCluster) -> ReadPoolChange | None:
    """:func:`reconcile_read_pool` once, from synchronous code (promote, rejoin)."""
    return asyncio.run(reconcile_read_pool(cluster))
