"""Replication lag under load, measured end to end on a local cluster (a primary, one streaming
replica, pgbouncer-rw) started for the run in a temporary directory and removed afterwards.

While sagas run at a fixed offered rate through pgbouncer-rw, a sampler repeatedly reads the
primary's WAL position and times how long the replica takes to replay past it: the delay a
reader of the replica sees for a write that just committed. PostgreSQL's own ``replay_lag``
(pg_stat_replication) is sampled alongside.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from sagaz.benchmarks.postgres import _latency
from sagaz.engine.listeners import SagaListener
from sagaz.ha.local import SUPERUSER, LocalCluster
from sagaz.ha.scratch_cluster import scratch_cluster

__all__ = [
    "ReplicationLag", "format_report", "main", "measure_replication_lag",
    "run_replication_benchmark",
]


@dataclass
class ReplicationLag:
    offered_rate: float
    achieved_rate: float
    seconds: float
    lag_ms: list[float]
    """End-to-end samples: primary WAL position read -> replayed on the replica."""
    replay_lag_ms: list[float]
    """pg_stat_replication.replay_lag samples (PostgreSQL's own estimate)."""
    run_p99_ms: float

    @staticmethod
    def _pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")

    @property
    def p50(self) -> float:
        return statistics.median(self.lag_ms)

    @property
    def p99(self) -> float:
        return self._pct(self.lag_ms, 0.99)


def _node_dsn(cluster: LocalCluster, node: str) -> str:
    return cluster.node_dsn(node, user=SUPERUSER, dbname=cluster.state.dbname,
                            connect_timeout=5)


def _sample(cluster: LocalCluster, stop: threading.Event, lag: list[float],
            replay: list[float]) -> None:
    replica = cluster.state.replicas[0]
    with psycopg.connect(_node_dsn(cluster, cluster.state.primary), autocommit=True) as primary, \
            psycopg.connect(_node_dsn(cluster, replica), autocommit=True) as standby:
        while not stop.is_set():
            started = time.perf_counter()
            row = primary.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            assert row is not None
            while True:
                caught = standby.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (row[0],)).fetchone()
                if caught is not None and caught[0]:
                    break
                if time.perf_counter() - started > 30:
                    raise RuntimeError("the replica did not catch up within 30 s")
                time.sleep(0.0005)
            lag.append((time.perf_counter() - started) * 1000)
            own = primary.execute(
                "SELECT extract(epoch FROM replay_lag) * 1000 FROM pg_stat_replication"
            ).fetchone()
            if own is not None and own[0] is not None:
                replay.append(float(own[0]))
            time.sleep(0.02)


def run_replication_benchmark(
    rate: float = 1_000.0, seconds: float = 10.0, base_port: int = 45432,
) -> ReplicationLag:
    with scratch_cluster(1, base_port, prefix="sagaz-bench-replication-") as cluster:
        return measure_replication_lag(cluster, rate, seconds)


def measure_replication_lag(
    cluster: LocalCluster, rate: float, seconds: float, listeners: Sequence[SagaListener] = (),
) -> ReplicationLag:
    """Replication lag on a running local cluster while sagas (with ``listeners``) run at
    ``rate`` through pgbouncer-rw for ``seconds``."""
    stop = threading.Event()
    lag: list[float] = []
    replay: list[float] = []
    errors: list[BaseException] = []

    def sampler() -> None:
        try:
            _sample(cluster, stop, lag, replay)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        _, p99, achieved = asyncio.run(_latency(cluster.env()["SAGAZ_STORAGE_URL"], rate, seconds,
                                                listeners))
    finally:
        stop.set()
        thread.join(60)
    if errors:
        raise errors[0]
    return ReplicationLag(rate, achieved, seconds, lag, replay, p99)


def format_report(result: ReplicationLag) -> str:
    own = result.replay_lag_ms
    return "\n".join([
        f"Replication lag: local primary + 1 streaming replica, {result.offered_rate:,.0f} "
        f"sagas/s offered through pgbouncer-rw for {result.seconds:g} s (achieved "
        f"{result.achieved_rate:,.0f}/s, run() p99 {result.run_p99_ms:.1f} ms)",
        f"  commit -> replayed on the replica: p50 {result.p50:.2f} ms, p99 {result.p99:.2f} ms, "
        f"max {max(result.lag_ms):.2f} ms ({len(result.lag_ms)} samples)",
        f"  pg_stat_replication.replay_lag: p50 {statistics.median(own) if own else 0:.2f} ms, "
        f"p99 {ReplicationLag._pct(own, 0.99):.2f} ms ({len(own)} samples)",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1_000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--base-port", type=int, default=45432)
    args = parser.parse_args(argv)
    print(format_report(run_replication_benchmark(args.rate, args.seconds, args.base_port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
