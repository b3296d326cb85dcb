"""Engine overhead: no-op sagas on the in-memory storage, so what is measured is the engine
(plan, executor, commits through the storage interface), not a database."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

from sagaz.config import SagaConfig
from sagaz.engine.context import SagaContext
from sagaz.engine.definition import Saga
from sagaz.storage.memory import InMemorySagaStorage

__all__ = ["EngineBenchmark", "closed_loop_rate", "open_loop_latency", "run_engine_benchmark"]


async def _noop(ctx: SagaContext) -> None:
    return None


def _saga(steps: int) -> Saga:
    config = SagaConfig(storage=InMemorySagaStorage())
    saga = Saga(name=f"bench-{steps}", config=config)
    for i in range(steps):
        saga.add_step(f"s{i}", _noop)
    return saga


async def _rate(steps: int, sagas: int, concurrency: int) -> float:
    return await closed_loop_rate(_saga(steps), sagas, concurrency)


async def closed_loop_rate(saga: Saga, sagas: int, concurrency: int) -> float:
    """Sagas per second for ``sagas`` runs of ``saga`` spread over ``concurrency`` coroutines,
    each starting its next run when the previous one returned."""
    per_worker = max(1, sagas // concurrency)

    async def worker() -> None:
        for _ in range(per_worker):
            await saga.run({})

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return per_worker * concurrency / (time.perf_counter() - started)


async def open_loop_latency(
    saga: Saga, rate: float, seconds: float
) -> tuple[list[float], float]:
    """(sorted run() latencies in seconds, achieved sagas/s) of ``saga`` offered at ``rate``
    sagas/s for ``seconds``: open loop, each saga is due at its slot and its latency counts from
    that slot, so a stall shows up instead of delaying the next starts."""
    latencies: list[float] = []

    async def one(due: float) -> None:
        await saga.run({})
        latencies.append(time.perf_counter() - due)

    await saga.run({})  # connections open, plans warm
    count = int(rate * seconds)
    tasks = []
    start = time.perf_counter()
    for i in range(count):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    latencies.sort()
    return latencies, len(latencies) / elapsed


def percentile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of sorted values, nearest rank."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


@dataclass
class EngineBenchmark:
    sagas_per_second: float
    """Median over the runs, 3-step no-op sagas."""
    us_per_step: float
    """Median wall time of a 3-step saga divided by 3 (includes the saga's own overhead)."""
    marginal_us_per_step: float
    """Cost of one more step: (t(10 steps) - t(1 step)) / 9."""
    runs: list[float]


def run_engine_benchmark(
    sagas: int = 20_000, concurrency: int = 100, runs: int = 3
) -> EngineBenchmark:
    rates, marginal = [], []
    for _ in range(runs):
        rates.append(asyncio.run(_rate(3, sagas, concurrency)))
        one = asyncio.run(_rate(1, sagas // 2, concurrency))
        ten = asyncio.run(_rate(10, sagas // 2, concurrency))
        marginal.append((1 / ten - 1 / one) / 9 * 1e6)
    median = statistics.median(rates)
    return EngineBenchmark(median, 1e6 / median / 3, statistics.median(marginal), rates)
