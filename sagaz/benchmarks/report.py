"""``sagaz benchmark report``: one run that measures this machine and writes ``report.md`` with
PNG charts. It runs the benchmarks of this package (nothing here measures on its own):

- saga throughput and run() latency: embedded SQLite (:mod:`.engine`), PostgreSQL direct and
  through a PgBouncer in transaction mode (:mod:`.postgres`), and through the pgbouncer-rw of a
  temporary local cluster (TLS, the production path);
- the outbox relay per broker and commit-to-publish latency (:mod:`.outbox`);
- partition pruning and retention by DROP against DELETE (:mod:`.partitioning`);
- replication lag under load and the analytics query on the replica, on the temporary cluster
  (:mod:`.replication`), and the connection cost with and without PgBouncer;
- the physical limits in the same run (:mod:`.limits`): the server's single-row commit rate and
  a replay of the SQL the storage sent, so that each figure is also a ratio to what the
  database can do.

The temporary cluster (a primary, a streaming replica, two PgBouncers) runs on free loopback
ports in a temporary directory and is stopped and removed at the end, also on failure.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sagaz.benchmarks import limits, postgres
from sagaz.benchmarks.dashboards import DashboardData
from sagaz.benchmarks.engine import closed_loop_rate, open_loop_latency, percentile
from sagaz.benchmarks.outbox import BROKERS, OutboxBenchmark, run_outbox_benchmark
from sagaz.benchmarks.partitioning import PartitioningBenchmark, run_partitioning_benchmark
from sagaz.benchmarks.postgres import PathResult, PostgresBenchmark, run_postgres_benchmark
from sagaz.benchmarks.replication import ReplicationLag, measure_replication_lag
from sagaz.benchmarks.scratch import default_dsn, describe_server, scratch_database
from sagaz.config import SagaConfig
from sagaz.engine.context import SagaContext
from sagaz.engine.definition import Saga
from sagaz.engine.listeners import SagaListener
from sagaz.ha.addresses import find_free_base_port
from sagaz.ha.local import LocalCluster
from sagaz.ha.scratch_cluster import scratch_cluster

__all__ = ["PROFILES", "Profile", "ReportRun", "run_report"]

SAGA_SHAPE = ("3 no-op steps, every transition durable: 4 writes per saga (create, step 1, "
              "step 2, step 3 with the COMPLETED status); the storage group-commits concurrent "
              "sagas' writes")


@dataclass(frozen=True)
class Profile:
    """How much each measurement runs. ``quick`` fits in under 3 minutes on a 2-core machine."""

    name: str
    runs: int
    sqlite_sagas: int
    sagas: int
    concurrency: int
    rate: float
    """Offered sagas/s of the latency runs."""
    latency_seconds: float
    outbox_events: int
    outbox_rate: float
    outbox_latency_seconds: float
    partition_rows: int
    partition_runs: int
    commit_seconds: float
    commit_concurrency: int
    connect_transactions: int
    lag_seconds: float
    analytics_queries: int


PROFILES = {
    "quick": Profile("quick", runs=1, sqlite_sagas=1_000, sagas=1_500, concurrency=64, rate=300,
                     latency_seconds=1.5, outbox_events=1_500, outbox_rate=2_000,
                     outbox_latency_seconds=1.5, partition_rows=130_000, partition_runs=3,
                     commit_seconds=1.5, commit_concurrency=16, connect_transactions=20,
                     lag_seconds=2, analytics_queries=30),
    "full": Profile("full", runs=3, sqlite_sagas=5_000, sagas=10_000, concurrency=256,
                    rate=1_000, latency_seconds=10, outbox_events=20_000, outbox_rate=5_000,
                    outbox_latency_seconds=5, partition_rows=1_000_000, partition_runs=5,
                    commit_seconds=5, commit_concurrency=32, connect_transactions=200,
                    lag_seconds=10, analytics_queries=200),
}


@dataclass
class ReportRun:
    """Everything one report measured."""

    profile: Profile
    server: str
    embedded: PathResult
    postgres: PostgresBenchmark
    cluster_rw: PathResult
    outbox: OutboxBenchmark
    partitioning: PartitioningBenchmark
    lag: ReplicationLag
    analytics_ms: list[float]
    connect_direct_ms: float
    connect_pgbouncer_ms: float
    commit_rate: float
    replay: limits.ReplayResult
    dashboards: list[DashboardData] | None = None
    """Each dashboard's panels as Prometheus evaluated them; None when not monitored."""
    load_average: float = 0.0
    """The machine's 1-minute load average when the run started (other work competing)."""
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(self.stage_seconds.values())


STAGES = ("embedded SQLite", "PostgreSQL direct and through PgBouncer", "physical limits",
          "outbox relay per broker", "partitioning", "temporary cluster: start",
          "temporary cluster: pgbouncer-rw, replication lag, replica queries, connections")


async def _noop(ctx: SagaContext) -> None:
    return None


def _sqlite_saga(path: Path) -> tuple[Saga, object]:
    from sagaz.storage.sqlite import SQLiteSagaStorage

    storage = SQLiteSagaStorage(path)
    saga = Saga(name="bench-sqlite", config=SagaConfig(storage=storage))
    for i in range(3):
        saga.add_step(f"s{i}", _noop)
    return saga, storage


async def _embedded(directory: Path, profile: Profile, run: int) -> tuple[float, float, float,
                                                                         float]:
    saga, storage = _sqlite_saga(directory / f"bench-{run}.db")
    try:
        await saga.run({})
        rate = await closed_loop_rate(saga, profile.sqlite_sagas, min(profile.concurrency, 32))
        latencies, achieved = await open_loop_latency(saga, min(profile.rate, rate * 0.5),
                                                      profile.latency_seconds)
    finally:
        await storage.close()  # type: ignore[attr-defined]
    return rate, percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000, achieved


def _measure_embedded(profile: Profile) -> PathResult:
    result = PathResult("embedded SQLite")
    directory = Path(tempfile.mkdtemp(prefix="sagaz-bench-sqlite-"))
    try:
        for run in range(profile.runs):
            rate, p50, p99, achieved = asyncio.run(_embedded(directory, profile, run))
            result.rates.append(rate)
            result.p50_ms.append(p50)
            result.p99_ms.append(p99)
            result.achieved_rates.append(achieved)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return result


def _cluster_addresses(nodes: int, base: int) -> list[tuple[str, int]]:
    """Every loopback address and port the temporary cluster of ``nodes`` servers listens on."""
    from sagaz.benchmarks.report_monitoring import MONITORING_PORTS

    addresses = [(f"127.0.0.{i + 1}", base + offset) for i in range(nodes)
                 for offset in (0, MONITORING_PORTS[1])]  # the server, its exporter
    return addresses + [("127.0.0.1", base + offset)
                        for offset in (1000, 1001, *MONITORING_PORTS)]


async def _replica_queries(url: str, queries: int) -> list[float]:
    """Milliseconds of the analytics queries (``sagaz sagas list`` and the status counts) on
    the read pool, each timed on its own."""
    from sagaz.storage.postgresql import PostgreSQLSagaStorage

    storage = PostgreSQLSagaStorage(url, readonly=True)
    timings = []
    try:
        await storage.count_by_status()  # the pool is open
        for i in range(queries):
            started = time.perf_counter()
            if i % 2:
                await storage.list_sagas(limit=50)
            else:
                await storage.count_by_status()
            timings.append((time.perf_counter() - started) * 1000)
    finally:
        await storage.close()
    return sorted(timings)


def _through_cluster(cluster: LocalCluster, profile: Profile, parts: dict[str, object],
                     listeners: Sequence[SagaListener]) -> None:
    env = cluster.env()
    rw, ro, direct = env["SAGAZ_STORAGE_URL"], env["SAGAZ_ANALYTICS_URL"], env["SAGAZ_DATABASE_URL"]
    path = PathResult("pgbouncer-rw of the local cluster (TLS)")
    for _ in range(profile.runs):
        path.rates.append(asyncio.run(postgres._throughput(rw, profile.sagas,
                                                           profile.concurrency, listeners)))
    parts["lag"] = measure_replication_lag(cluster, profile.rate, profile.lag_seconds,
                                           listeners)
    for _ in range(profile.runs):
        p50, p99, achieved = asyncio.run(postgres._latency(rw, profile.rate,
                                                           profile.latency_seconds, listeners))
        path.p50_ms.append(p50)
        path.p99_ms.append(p99)
        path.achieved_rates.append(achieved)
    parts["cluster_rw"] = path
    parts["analytics_ms"] = asyncio.run(_replica_queries(ro, profile.analytics_queries))
    parts["connect_direct_ms"] = limits.connect_per_transaction_ms(
        direct, profile.connect_transactions)
    parts["connect_pgbouncer_ms"] = limits.connect_per_transaction_ms(
        rw, profile.connect_transactions)


def run_report(
    profile: Profile, dsn: str | None = None, *,
    brokers: tuple[str, ...] = tuple(BROKERS), monitoring: bool = True,
    progress: Callable[[str], None] = lambda _: None,
) -> ReportRun:
    """Run every measurement of ``profile``; ``progress`` is told each stage as it starts.
    ``monitoring``: also serve sagaz's metrics, run the exporters and a Prometheus during the
    cluster stage, and keep every dashboard panel's series (``ReportRun.dashboards``)."""
    base = dsn or default_dsn()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    parts: dict[str, object] = {}
    seconds: dict[str, float] = {}

    def stage(name: str, body: Callable[[], None]) -> None:
        progress(name)
        started = time.perf_counter()
        body()
        seconds[name] = time.perf_counter() - started

    def embedded() -> None:
        parts["embedded"] = _measure_embedded(profile)

    def direct() -> None:
        parts["postgres"] = run_postgres_benchmark(
            base, sagas=profile.sagas, concurrency=profile.concurrency, runs=profile.runs,
            rate=profile.rate, latency_seconds=profile.latency_seconds, pgbouncer=True,
            tls=False)

    def physical() -> None:
        with scratch_database(base, migrated=True) as recorded, \
                scratch_database(base, migrated=True) as replayed:
            parts["commit_rate"] = asyncio.run(limits.single_row_commit_rate(
                recorded, profile.commit_concurrency, profile.commit_seconds))
            parts["replay"] = asyncio.run(limits.replay_storage_sql(
                recorded, replayed, profile.sagas // 2, profile.concurrency))

    def outbox() -> None:
        parts["outbox"] = run_outbox_benchmark(
            base, brokers=brokers, events=profile.outbox_events, runs=profile.runs,
            rate=profile.outbox_rate, latency_seconds=profile.outbox_latency_seconds)

    def partitioning() -> None:
        parts["partitioning"] = run_partitioning_benchmark(
            base, rows=profile.partition_rows, runs=profile.partition_runs,
            vacuum_full=False)

    stage(STAGES[0], embedded)
    stage(STAGES[1], direct)
    stage(STAGES[2], physical)
    stage(STAGES[3], outbox)
    stage(STAGES[4], partitioning)
    progress(STAGES[5])
    started = time.perf_counter()
    dashboards: list[DashboardData] | None = None
    base_port = find_free_base_port(37000, 17, functools.partial(_cluster_addresses, 2))
    with scratch_cluster(1, base_port, prefix="sagaz-bench-report-") as cluster:
        if not monitoring:
            seconds[STAGES[5]] = time.perf_counter() - started
            stage(STAGES[6], lambda: _through_cluster(cluster, profile, parts, ()))
        else:
            from sagaz.benchmarks.report_monitoring import monitored_cluster

            with monitored_cluster(cluster) as watched:
                seconds[STAGES[5]] = time.perf_counter() - started
                stage(STAGES[6], lambda: _through_cluster(cluster, profile, parts,
                                                          watched.listeners))
            dashboards = watched.dashboards
    return ReportRun(
        profile=profile, server=describe_server(base), embedded=_get(parts, "embedded"),
        postgres=_get(parts, "postgres"), cluster_rw=_get(parts, "cluster_rw"),
        outbox=_get(parts, "outbox"), partitioning=_get(parts, "partitioning"),
        lag=_get(parts, "lag"), analytics_ms=_get(parts, "analytics_ms"),
        connect_direct_ms=_get(parts, "connect_direct_ms"),
        connect_pgbouncer_ms=_get(parts, "connect_pgbouncer_ms"),
        commit_rate=_get(parts, "commit_rate"), replay=_get(parts, "replay"),
        dashboards=dashboards, load_average=load, stage_seconds=seconds)


def _get(parts: dict[str, object], name: str) -> Any:
    """A stage's result (each stage stores one; a missing one is a KeyError naming it)."""
    return parts[name]
