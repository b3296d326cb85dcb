"""What every broker must do, written once: each check takes a ``BrokerKit`` (how to make a
broker on the test's own names, how to cut its connections) and is run per broker by
test_broker_contract.py and test_kafka.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sagaz.outbox.brokers import BrokerConnectionError
from sagaz.outbox.brokers.base import Broker
from sagaz.outbox.event import OutboxEvent

CONSUMERS = ("c1", "c2")
"""The consumer names the checks use (RabbitMQ declares their queues before publishing)."""


@dataclass
class BrokerKit:
    name: str
    make: Callable[[], Any]
    """A new broker on this test's exchange/stream/subjects (the same object for memory)."""
    break_connections: Callable[[Any], Awaitable[None]] | None
    """Cut every connection of the given broker (publisher and running consumers)."""


def sample_events(n: int, tag: str = "") -> list[OutboxEvent]:
    """Events with everything an envelope can carry: keys, saga ids, headers, unicode."""
    types = ["OrderReserved", "order.shipped", "Paiement_Reçu"]
    return [
        OutboxEvent(
            event_type=types[i % len(types)],
            payload={"n": i, "tag": tag, "text": "Grüße, 注文, ✓ 🚀",
                     "nested": {"a": [1, 2.5, None]}},
            key=f"order-{i % 7}" if i % 5 else None,
            saga_id=f"saga-{i}" if i % 3 else None,
            headers={"traceparent": f"00-{i:032x}-{i:016x}-01", "tenant": "zürich",
                     "note": " padded value "} if i % 2 else {},
        )
        for i in range(n)
    ]


def envelope(event: OutboxEvent) -> tuple[Any, ...]:
    return (event.event_id, event.event_type, event.key, event.saga_id, event.headers,
            event.payload)


class Collector:
    """A handler recording what it got; ``fail_first`` event ids raise on their first delivery."""

    def __init__(self, fail_first: set[str] | None = None) -> None:
        self.handled: list[OutboxEvent] = []
        self.attempts: Counter[str] = Counter()
        self.fail_first = set(fail_first or ())
        self._changed = asyncio.Event()

    async def __call__(self, event: OutboxEvent) -> None:
        self.attempts[event.event_id] += 1
        if event.event_id in self.fail_first and self.attempts[event.event_id] == 1:
            raise RuntimeError(f"first delivery of {event.event_id} fails on purpose")
        self.handled.append(event)
        self._changed.set()

    def ids(self) -> set[str]:
        return {e.event_id for e in self.handled}

    async def wait_for(self, ids: set[str], within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while not ids <= self.ids():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = len(ids - self.ids())
                raise AssertionError(f"{missing} of {len(ids)} events never arrived")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))


class Running:
    """A consumer running in the background until ``stop()``."""

    def __init__(self, broker: Broker, name: str, handler: Collector) -> None:
        self._stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(broker.consume(name, handler, stop=self._stop, prefetch=50))

    async def stop(self) -> None:
        if not self._stop.done():
            self._stop.set_result(None)
        await asyncio.wait_for(self.task, 10)


async def publish_all(broker: Broker, events: list[OutboxEvent]) -> None:
    outcomes = await broker.publish_batch(events)
    assert outcomes == [None] * len(events), [o for o in outcomes if o is not None][:3]


async def check_round_trip(kit: BrokerKit) -> None:
    publisher, consumer = kit.make(), kit.make()
    await publisher.connect()
    events = sample_events(60)
    await publish_all(publisher, events)
    collector = Collector()
    running = Running(consumer, CONSUMERS[0], collector)
    try:
        await collector.wait_for({e.event_id for e in events})
        await asyncio.sleep(0.3)  # room for a duplicate to show up
    finally:
        await running.stop()
    assert Counter(e.event_id for e in collector.handled) == Counter(e.event_id for e in events)
    got = {e.event_id: envelope(e) for e in collector.handled}
    assert [got[e.event_id] for e in events] == [envelope(e) for e in events]
    assert await publisher.publish_batch([]) == []


async def check_redelivery(kit: BrokerKit) -> None:
    publisher, consumer = kit.make(), kit.make()
    await publisher.connect()
    events = sample_events(6, "redelivery")
    failing = events[2].event_id
    await publish_all(publisher, events)
    collector = Collector(fail_first={failing})
    running = Running(consumer, CONSUMERS[0], collector)
    try:
        await collector.wait_for({e.event_id for e in events})
    finally:
        await running.stop()
    assert collector.attempts[failing] == 2
    assert all(collector.attempts[e.event_id] == 1 for e in events if e.event_id != failing)
    # Everything was acknowledged after its success: the same consumer gets nothing more.
    again = Collector()
    rerun = Running(kit.make(), CONSUMERS[0], again)
    await asyncio.sleep(1.0)
    await rerun.stop()
    assert again.handled == []


async def check_two_consumers(kit: BrokerKit) -> None:
    publisher = kit.make()
    await publisher.connect()
    events = sample_events(25, "fan-out")
    first, second = Collector(), Collector()
    runs = [Running(kit.make(), CONSUMERS[0], first), Running(kit.make(), CONSUMERS[1], second)]
    try:
        await publish_all(publisher, events)
        for collector in (first, second):
            await collector.wait_for({e.event_id for e in events})
    finally:
        for run in runs:
            await run.stop()
    assert sorted(e.event_id for e in first.handled) == sorted(e.event_id for e in events)
    assert sorted(e.event_id for e in second.handled) == sorted(e.event_id for e in events)


async def check_connection_loss(kit: BrokerKit) -> None:
    assert kit.break_connections is not None
    publisher, consumer = kit.make(), kit.make()
    await publisher.connect()
    before, after = sample_events(20, "before"), sample_events(20, "after")
    collector = Collector()
    running = Running(consumer, CONSUMERS[0], collector)
    try:
        await publish_all(publisher, before)
        await collector.wait_for({e.event_id for e in before})
        await kit.break_connections(publisher)
        await kit.break_connections(consumer)
        try:
            outcomes = await publisher.publish_batch(after)
        except BrokerConnectionError:
            # Allowed: the loss was noticed by this call. The retry reconnects.
            outcomes = await publisher.publish_batch(after)
        assert outcomes == [None] * len(after)
        # The consumer reconnected by itself and goes on: nothing published is lost.
        await collector.wait_for({e.event_id for e in before + after}, within=15)

        # Lost while a batch is in flight: it either completes or raises BrokerConnectionError
        # (no other error escapes), and retrying the whole batch delivers all of it.
        during = sample_events(2000, "during")
        in_flight = asyncio.create_task(publisher.publish_batch(during))
        await asyncio.sleep(0.005)
        await kit.break_connections(publisher)
        try:
            outcomes = await in_flight
        except BrokerConnectionError:
            outcomes = await publisher.publish_batch(during)
        assert outcomes == [None] * len(during)
        await collector.wait_for({e.event_id for e in during}, within=15)
    finally:
        await running.stop()
