"""What the SQLite outbox has beyond the shared contract: ``sagaz worker``'s relay (``relay_for``)
publishes a SQLite saga's events to each real broker, a consumer receives them; the retention of
SENT rows (PostgreSQL drops partitions instead), on an injected clock; and the relay reporting a
broker outage once, not per retry."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from broker_services import require_broker

import sagaz.storage.sqlite_outbox as sqlite_outbox
from sagaz import Saga, SagaConfig
from sagaz.outbox.brokers import DestroyableBroker, broker_from_url
from sagaz.outbox.brokers.memory import InMemoryBroker
from sagaz.outbox.event import OutboxEvent
from sagaz.outbox.inbox import consume
from sagaz.outbox.worker import OutboxWorker
from sagaz.storage.sqlite import SQLiteSagaStorage
from sagaz.storage.sqlite_outbox import SQLiteOutbox
from sagaz.worker_jobs import relay_for

BROKERS = {"redis": ("redis://127.0.0.1:6379/0", 6379),
           "rabbitmq": ("amqp://guest:guest@127.0.0.1:5672/", 5672),
           "nats": ("nats://127.0.0.1:4222", 4222)}


def _options(kind: str, consumer: str) -> dict[str, Any]:
    """Names of this run only (the brokers are shared)."""
    run = uuid.uuid4().hex[:8]
    if kind == "redis":
        return {"stream": f"sqlite-relay.{run}"}
    if kind == "rabbitmq":  # the consumer's queue exists before the relay publishes
        return {"exchange": f"sqlite-relay.{run}", "queues": [consumer]}
    return {"stream": f"SQLITE_RELAY_{run}", "subject_prefix": f"sqlite-relay.{run}"}


@pytest.mark.parametrize("kind", sorted(BROKERS))
async def test_the_worker_relays_a_sqlite_sagas_events_to_a_real_broker(
    kind: str, tmp_path: Path
) -> None:
    url, port = BROKERS[kind]
    require_broker(kind, port)
    options = _options(kind, "sqlite-relay-test")
    storage = SQLiteSagaStorage(tmp_path / "sagaz.db")
    config = SagaConfig(storage=storage, broker=broker_from_url(url, **options))

    async def ship(ctx: Any) -> None:
        ctx.emit("Shipped", {"order": ctx["order"]}, key=ctx["order"])

    saga = Saga(name="sqlite-relay", config=config)
    saga.add_step("ship", ship)
    await saga.run({"order": "A1"})
    relay = relay_for(config, None)
    assert relay is not None and isinstance(relay.outbox, SQLiteOutbox)
    received: list[OutboxEvent] = []
    consumer_broker = broker_from_url(url, **options)
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def handler(event: OutboxEvent) -> None:
        received.append(event)

    consumer = asyncio.create_task(consume(consumer_broker, "sqlite-relay-test", handler,
                                           stop=stop))
    try:
        await relay.broker.connect()
        while await relay.relay_once():
            pass
        assert relay.relayed == 2
        for _ in range(200):
            if len(received) >= 2:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set_result(None)
        await consumer
        await consumer_broker.close()
        await relay.broker.close()
        assert isinstance(consumer_broker, DestroyableBroker)
        await consumer_broker.destroy(["sqlite-relay-test"])
        await storage.close()
    assert sorted(e.event_type for e in received) == ["SagaCompleted", "Shipped"]
    assert next(e for e in received if e.event_type == "Shipped").payload == {"order": "A1"}


async def test_retention_deletes_only_sent_rows_past_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_outbox, "_DELETE_SLICE", 3)  # several slices
    now = [1_000_000.0]
    storage = SQLiteSagaStorage(tmp_path / "sagaz.db")
    outbox = SQLiteOutbox(storage, clock=lambda: now[0])
    day = 86400.0
    try:
        old = [OutboxEvent("Old", {"i": i}) for i in range(7)]
        await outbox.publish([*old, OutboxEvent("Poison", {}), OutboxEvent("Waiting", {})])
        claimed = await outbox.claim("w", 100, 30)
        await outbox.mark_sent("w", [e.event_id for e in old])
        await outbox.mark_failed("w", [(c.event.event_id, "no") for c in claimed
                                       if c.event.event_type == "Poison"],
                                 max_attempts=1, base_backoff=1, max_backoff=1)
        await outbox.release("w", [c.event.event_id for c in claimed
                                   if c.event.event_type == "Waiting"])
        now[0] += 29 * day
        recent = OutboxEvent("Recent", {})
        await outbox.publish(recent)
        await outbox.claim("w", 100, 30)
        await outbox.mark_sent("w", [recent.event_id])
        assert await outbox.delete_sent(30 * day) == 0, "nothing is 30 days old yet"
        now[0] += 2 * day
        assert await outbox.delete_sent(30 * day) == 7
        assert await outbox.counts() == {"SENT": 1, "DEAD_LETTER": 1, "CLAIMED": 1}
    finally:
        await outbox.close()
        await storage.close()


class _FlakyBroker(InMemoryBroker):
    """The subject is the relay's reporting: a broker that is down for its first publishes."""

    def __init__(self, down_for: int) -> None:
        super().__init__()
        self.down_for = down_for

    async def connect(self) -> None:
        if self.down_for > 0:
            raise ConnectionError("connection refused")

    async def publish_batch(self, events: Sequence[OutboxEvent]) -> list[BaseException | None]:
        if self.down_for > 0:
            self.down_for -= 1
            raise ConnectionError("connection refused")
        return await super().publish_batch(events)


async def test_an_outage_is_reported_once_and_its_end_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sagaz.outbox.worker")
    storage = SQLiteSagaStorage(tmp_path / "sagaz.db")
    outbox = SQLiteOutbox(storage)
    await outbox.publish(OutboxEvent("E", {}))
    broker = _FlakyBroker(down_for=5)
    worker = OutboxWorker(outbox, broker, poll_interval=0.1)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        for _ in range(300):
            if worker.relayed:
                break
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await running
        await outbox.close()
        await storage.close()
    assert worker.relayed == 1 and not worker.broker_down
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("broker unavailable") and "reachable again" in warnings[1]
    retries = [r for r in caplog.records if r.getMessage().startswith("broker still")]
    assert len(retries) == 5, "each retry is logged at debug level"
