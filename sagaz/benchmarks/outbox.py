"""The outbox end to end, per broker, on a scratch database:

- relay throughput: committed rows -> broker acknowledgement -> marked SENT, events/s;
- commit-to-publish latency at a fixed offered rate, the relay woken by LISTEN/NOTIFY: from the
  producer's COMMIT returning to the broker's acknowledgement of the event;
- the consumer inbox: dedup check + the handler's write + commit, events/s in one process.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from sagaz.benchmarks.scratch import default_dsn, describe_server, scratch_database
from sagaz.outbox.brokers import DestroyableBroker, broker_from_url
from sagaz.outbox.brokers.base import Broker
from sagaz.outbox.event import OutboxEvent
from sagaz.outbox.inbox import ConsumerInbox
from sagaz.outbox.worker import OutboxWorker
from sagaz.storage.postgresql import PostgreSQLSagaStorage
from sagaz.storage.postgresql.outbox import PostgreSQLOutbox

__all__ = ["BROKERS", "OutboxBenchmark", "format_report", "main", "run_outbox_benchmark"]

BROKERS = {
    "redis": "redis://127.0.0.1:6379/0",
    "nats": "nats://127.0.0.1:4222",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
}


@dataclass
class BrokerResult:
    name: str
    relay_rates: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)


@dataclass
class OutboxBenchmark:
    server: str
    events: int
    offered_rate: float
    brokers: list[BrokerResult]
    inbox_rates: list[float]


def _options(name: str, run: str) -> dict[str, Any]:
    """Names of this run only, removed afterwards."""
    if name == "redis":
        return {"stream": f"bench.{run}"}
    if name == "rabbitmq":
        return {"exchange": f"bench.{run}", "queues": ["bench"]}
    return {"stream": f"BENCH_{run}", "subject_prefix": f"bench.{run}"}


async def _remove(url: str, options: dict[str, Any]) -> None:
    broker = broker_from_url(url, **options)
    assert isinstance(broker, DestroyableBroker)
    await broker.destroy()


async def _relay_rate(dsn: str, broker: Broker, events: int) -> float:
    storage = PostgreSQLSagaStorage(dsn, auto_migrate=False)
    outbox = PostgreSQLOutbox(storage)
    try:
        for start in range(0, events, 2000):
            await outbox.publish([OutboxEvent("Bench", {"n": n})
                                  for n in range(start, min(events, start + 2000))])
        worker = OutboxWorker(outbox, broker, batch_size=500, concurrency=3)
        await broker.connect()
        started = time.perf_counter()
        while worker.relayed < events:
            # Three batches in flight: one publishes while the others claim or mark.
            if sum(await asyncio.gather(*(worker.relay_once() for _ in range(3)))) == 0:
                break
        return worker.relayed / (time.perf_counter() - started)
    finally:
        await outbox.close()
        await storage.close()


async def _latency(dsn: str, broker: Broker, rate: float,
                   seconds: float) -> tuple[float, float]:
    """Commit (the producer's publish() returned) to the broker's acknowledgement of the event
    (the relay's listener): what the outbox adds to an event's way out."""
    storage = PostgreSQLSagaStorage(dsn, auto_migrate=False)
    outbox = PostgreSQLOutbox(storage, listen_dsn=dsn)
    committed: dict[str, float] = {}
    latencies: list[float] = []

    def acknowledged(events: Sequence[OutboxEvent]) -> None:
        now = time.perf_counter()
        for event in events:
            at = committed.get(event.event_id)
            if at is not None:
                latencies.append(now - at)

    stop_worker = asyncio.Event()
    worker = OutboxWorker(outbox, broker, poll_interval=1.0, listeners=[acknowledged])
    relaying = asyncio.create_task(worker.run(stop_worker))
    try:
        await asyncio.sleep(0.5)
        per_tick = max(1, int(rate / 100))  # a producer transaction every 10 ms
        start = time.perf_counter()
        sent = 0
        while time.perf_counter() - start < seconds:
            events = [OutboxEvent("Bench", {"n": sent + i}) for i in range(per_tick)]
            await outbox.publish(events)
            now = time.perf_counter()
            for event in events:
                committed[event.event_id] = now
            sent += per_tick
            delay = start + sent / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)
        # Let the last events arrive (bounded: a lost one shows as a missing sample).
        for _ in range(200):
            if len(latencies) >= sent:
                break
            await asyncio.sleep(0.05)
    finally:
        stop_worker.set()
        await relaying
        await outbox.close()
        await storage.close()
    latencies.sort()
    return (latencies[len(latencies) // 2] * 1000,
            latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000)


async def _inbox_rate(dsn: str, events: int, concurrency: int = 32) -> float:
    storage = PostgreSQLSagaStorage(dsn, auto_migrate=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_effects (event_id uuid)")
    inbox = ConsumerInbox(storage, f"bench-{uuid.uuid4().hex[:6]}")
    ids = [str(uuid.uuid4()) for _ in range(events)]

    async def handler(event_id: str, connection: Any) -> None:
        await connection.execute("INSERT INTO bench_effects VALUES (%s)", (event_id,))

    async def worker(part: list[str]) -> None:
        for event_id in part:
            await inbox.process(event_id, handler, event_id)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker(ids[i::concurrency]) for i in range(concurrency)))
        return events / (time.perf_counter() - started)
    finally:
        await storage.close()


def run_outbox_benchmark(
    dsn: str | None = None, *, brokers: Sequence[str] = tuple(BROKERS), events: int = 20_000,
    runs: int = 3, rate: float = 5_000.0, latency_seconds: float = 5.0,
) -> OutboxBenchmark:
    base = dsn or default_dsn()
    results = []
    for name in brokers:
        url = BROKERS[name]
        result = BrokerResult(name)
        for _ in range(runs):
            options = _options(name, uuid.uuid4().hex[:8])
            try:
                with scratch_database(base, migrated=True) as db:
                    broker = broker_from_url(url, **options)
                    result.relay_rates.append(asyncio.run(_run_closing(
                        _relay_rate(db, broker, events), broker)))
                with scratch_database(base, migrated=True) as db:
                    broker = broker_from_url(url, **options)
                    p50, p99 = asyncio.run(_run_closing(
                        _latency(db, broker, rate, latency_seconds), broker))
                    result.p50_ms.append(p50)
                    result.p99_ms.append(p99)
            finally:
                asyncio.run(_remove(url, options))
        results.append(result)
    inbox = []
    with scratch_database(base, migrated=True) as db:
        for _ in range(runs):
            inbox.append(asyncio.run(_inbox_rate(db, 5_000)))
    return OutboxBenchmark(describe_server(base), events, rate, results, inbox)


async def _run_closing(work: Any, *brokers: Broker) -> Any:
    try:
        return await work
    finally:
        for broker in brokers:
            await broker.close()


def format_report(result: OutboxBenchmark) -> str:
    lines = [f"Outbox end to end on {result.server}: relay of {result.events:,} committed events "
             f"(batches of 500, 3 in flight); latency at {result.offered_rate:,.0f} events/s "
             "offered, relay woken by LISTEN/NOTIFY; medians of runs"]
    for b in result.brokers:
        lines.append(
            f"  {b.name:<9} relay {statistics.median(b.relay_rates):9,.0f} events/s "
            f"(runs: {', '.join(f'{r:,.0f}' for r in b.relay_rates)}); commit->broker ack p50 "
            f"{statistics.median(b.p50_ms):.1f} ms, p99 {statistics.median(b.p99_ms):.1f} ms")
    lines.append(f"  inbox (dedup + handler write + commit, 32 in flight): "
                 f"{statistics.median(result.inbox_rates):,.0f} events/s "
                 f"(runs: {', '.join(f'{r:,.0f}' for r in result.inbox_rates)})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn")
    parser.add_argument("--broker", action="append", choices=sorted(BROKERS))
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=5_000.0)
    parser.add_argument("--latency-seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    print(format_report(run_outbox_benchmark(
        args.dsn, brokers=args.broker or tuple(BROKERS), events=args.events, runs=args.runs,
        rate=args.rate, latency_seconds=args.latency_seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
