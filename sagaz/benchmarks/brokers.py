"""Raw publish throughput of each broker through ``publish_batch``: what the outbox relay can at
most reach on that broker, before it reads and marks outbox rows.

Each measurement publishes ``events`` prepared events in batches, every batch awaited before the
next (as the relay does: it marks rows sent only after the broker acknowledged them), on a
namespace of its own (exchange + bound durable queue, stream, JetStream stream) that is deleted
afterwards. The figure is the median of ``runs`` runs.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sagaz.outbox.brokers import DestroyableBroker
from sagaz.outbox.brokers.base import Broker
from sagaz.outbox.event import OutboxEvent

__all__ = ["BrokerThroughput", "format_report", "run_broker_benchmark"]

DEFAULT_URLS = {
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
    "redis": "redis://127.0.0.1:6379/0",
    "nats": "nats://127.0.0.1:4222",
}


@dataclass
class BrokerThroughput:
    broker: str
    batch_size: int
    events_per_second: float
    """Median of the runs."""
    runs: list[float] = field(default_factory=list)


def _events(n: int) -> list[OutboxEvent]:
    # A typical small domain event: a few ids and amounts, a trace header, an aggregate key.
    return [
        OutboxEvent(event_type="OrderReserved",
                    payload={"order_id": f"o-{i}", "sku": "SKU-123", "qty": 2, "amount": 19.9},
                    key=f"o-{i % 1000}", saga_id=f"s-{i}",
                    headers={"traceparent": f"00-{i:032x}-{i:016x}-01"})
        for i in range(n)
    ]


async def _publish_rate(broker: Broker, events: Sequence[OutboxEvent], batch_size: int) -> float:
    await broker.connect()
    started = time.perf_counter()
    for start in range(0, len(events), batch_size):
        outcomes = await broker.publish_batch(events[start:start + batch_size])
        failed = [o for o in outcomes if o is not None]
        if failed:
            raise RuntimeError(f"{len(failed)} events were refused, e.g. {failed[0]!r}")
    return len(events) / (time.perf_counter() - started)


class _Namespace:
    """A broker on throw-away names (its ``destroy()`` deletes them afterwards)."""

    def __init__(self, kind: str, url: str):
        self.kind, self.url, self.tag = kind, url, uuid.uuid4().hex[:10]

    def broker(self) -> DestroyableBroker:
        if self.kind == "rabbitmq":
            from sagaz.outbox.brokers.rabbitmq import RabbitMQBroker

            # A bound durable queue, as a deployment has (without one every event would be
            # routed to the "<exchange>.unrouted" queue instead).
            return RabbitMQBroker(self.url, f"sagaz.bench.{self.tag}", queues=("bench",))
        if self.kind == "redis":
            from sagaz.outbox.brokers.redis import RedisStreamsBroker

            return RedisStreamsBroker(self.url, f"sagaz:bench:{self.tag}")
        if self.kind == "nats":
            from sagaz.outbox.brokers.nats import NATSBroker

            return NATSBroker(self.url, f"SAGAZ_BENCH_{self.tag}", f"sagaz.bench.{self.tag}")
        if self.kind == "kafka":
            from sagaz.outbox.brokers.kafka import KafkaBroker

            return KafkaBroker(self.url, f"sagaz.bench.{self.tag}")
        raise ValueError(f"unknown broker {self.kind!r}")


async def _measure(kind: str, url: str, batch_size: int, events: int, runs: int) -> list[float]:
    prepared = _events(events)
    rates = []
    for _ in range(runs):
        namespace = _Namespace(kind, url)
        broker = namespace.broker()
        try:
            # A short warm-up: connection, declarations and the driver's first-call costs.
            await _publish_rate(broker, _events(batch_size), batch_size)
            rates.append(await _publish_rate(broker, prepared, batch_size))
        finally:
            await broker.close()
            await broker.destroy()
    return rates


def default_urls() -> dict[str, str]:
    """The brokers of this machine (Kafka only when SAGAZ_TEST_KAFKA names one)."""
    urls = dict(DEFAULT_URLS)
    if os.environ.get("SAGAZ_TEST_KAFKA"):
        urls["kafka"] = os.environ["SAGAZ_TEST_KAFKA"]
    return urls


def run_broker_benchmark(
    urls: dict[str, str] | None = None, batch_sizes: Sequence[int] = (100, 500),
    events: int = 20_000, runs: int = 3,
    progress: Callable[[BrokerThroughput], Any] | None = None,
) -> list[BrokerThroughput]:
    results = []
    for kind, url in (urls or default_urls()).items():
        for batch_size in batch_sizes:
            rates = asyncio.run(_measure(kind, url, batch_size, events, runs))
            result = BrokerThroughput(kind, batch_size, statistics.median(rates), rates)
            results.append(result)
            if progress is not None:
                progress(result)
    return results


def format_report(results: Sequence[BrokerThroughput]) -> str:
    lines = [f"{'broker':<10}{'batch':>7}{'events/s (median)':>20}   runs"]
    for r in results:
        lines.append(f"{r.broker:<10}{r.batch_size:>7}{r.events_per_second:>20,.0f}   "
                     + ", ".join(f"{x:,.0f}" for x in r.runs))
    return "\n".join(lines)
