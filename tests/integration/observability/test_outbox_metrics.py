"""The outbox and inbox metrics of a live ``sagaz.Worker`` endpoint (``metrics_port``), scraped
over HTTP: sagas commit events on PostgreSQL, the worker's relay publishes them to a real broker
(RabbitMQ, Redis Streams, NATS JetStream), a consumer's inbox processes them and drops their
redelivery; with the broker down, failures count and the backlog stays pending."""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any

import pytest
from broker_services import require_broker
from metrics_scrape import Scrape, probe, scrape

import sagaz
from sagaz import Saga, SagaConfig
from sagaz.outbox.brokers import DestroyableBroker, broker_from_url
from sagaz.outbox.event import OutboxEvent
from sagaz.outbox.inbox import ConsumerInbox, consume
from sagaz.storage.postgresql import PostgreSQLSagaStorage

BROKERS = {"redis": ("redis://127.0.0.1:6379/0", 6379),
           "rabbitmq": ("amqp://guest:guest@127.0.0.1:5672/", 5672),
           "nats": ("nats://127.0.0.1:4222", 4222)}
CONSUMER = "metrics-consumer"


def _options(kind: str) -> dict[str, Any]:
    """Names of this run only (the brokers are shared)."""
    run = uuid.uuid4().hex[:8]
    if kind == "redis":
        return {"stream": f"metrics.{run}"}
    if kind == "rabbitmq":  # the consumer's queue exists before the relay publishes
        return {"exchange": f"metrics.{run}", "queues": [CONSUMER]}
    return {"stream": f"METRICS_{run}", "subject_prefix": f"metrics.{run}"}


def _shop(config: SagaConfig, name: str) -> Saga:
    async def reserve(ctx: Any) -> None:
        ctx.emit("Reserved", {"order": ctx["order"]}, key=ctx["order"])

    return Saga(name=name, config=config).add_step("reserve", reserve)


async def _until(url: str, check: Any, what: str, seconds: float = 30.0) -> Scrape:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        found = await asyncio.to_thread(scrape, url)
        if check(found):
            return found
        assert asyncio.get_running_loop().time() < deadline, f"{what}: {found.samples}"
        await asyncio.sleep(0.1)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", sorted(BROKERS))
async def test_relay_and_inbox_metrics_with_a_real_broker(kind: str, pg_dsn: str) -> None:
    url, port = BROKERS[kind]
    require_broker(kind, port)
    options = _options(kind)
    storage = PostgreSQLSagaStorage(pg_dsn)
    config = SagaConfig(storage=storage, broker=broker_from_url(url, **options))
    shop = _shop(config, f"metrics-relay-{kind}")
    for order in ("A1", "A2", "A3"):
        await shop.run({"order": order})  # Reserved + SagaCompleted each: 6 events
    worker = sagaz.Worker(config, interval=0.2, maintenance_interval=0, metrics_port=0)
    consumer_broker = broker_from_url(url, **options)
    received: list[OutboxEvent] = []
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    consumer: asyncio.Task[None] | None = None
    try:
        await worker.start()
        assert worker.metrics_server is not None and worker.metrics is not None
        base = worker.metrics_server.url
        sent = await _until(base, lambda s: s.get("sagaz_outbox_published_total",
                                                   broker=kind) == 6, "6 events published")
        assert sent.value("sagaz_outbox_failed_total", broker=kind) == 0
        assert sent.value("sagaz_outbox_publish_latency_seconds_count") == 6
        assert sent.value("sagaz_outbox_publish_latency_seconds_sum") > 0
        drained = await _until(base, lambda s: s.get("sagaz_outbox_pending_events") == 0,
                               "nothing pending")
        assert drained.value("sagaz_outbox_dead_letter_events") == 0
        assert await asyncio.to_thread(probe, base, "/healthz") == (200, "ok\n")
        assert await asyncio.to_thread(probe, base, "/readyz") == (200, "ok\n")

        inbox = ConsumerInbox(storage, CONSUMER)
        worker.metrics.instrument_inbox(inbox)

        async def handle(event: OutboxEvent) -> None:
            received.append(event)

        consumer = asyncio.create_task(consume(consumer_broker, CONSUMER, handle, stop=stop,
                                               inbox=inbox))
        await _until(base, lambda s: s.get("sagaz_inbox_processed_total",
                                           consumer=CONSUMER) == 6, "6 events processed")
        if kind != "nats":  # JetStream itself drops a message id seen in its window
            # The broker delivers them again (a relay that died before marking them sent
            # would): the inbox drops each one.
            await consumer_broker.publish_batch(list(received))
            done = await _until(base, lambda s: s.get("sagaz_inbox_duplicates_total",
                                                      consumer=CONSUMER) == 6, "6 duplicates")
            assert done.value("sagaz_inbox_processed_total", consumer=CONSUMER) == 6
        assert len(received) == 6
    finally:
        stop.set_result(None)
        if consumer is not None:
            await consumer
        await worker.stop()
        assert isinstance(consumer_broker, DestroyableBroker)
        await consumer_broker.destroy([CONSUMER])
        await consumer_broker.close()
        await storage.close()


@pytest.mark.timeout(60)
async def test_a_broker_that_is_down_counts_failures_and_leaves_events_pending(
    pg_dsn: str,
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    storage = PostgreSQLSagaStorage(pg_dsn)
    config = SagaConfig(storage=storage, broker=broker_from_url(f"redis://127.0.0.1:{closed}/0"))
    await _shop(config, "metrics-relay-down").run({"order": "D1"})
    worker = sagaz.Worker(config, interval=0.2, maintenance_interval=0, metrics_port=0)
    try:
        await worker.start()
        assert worker.metrics_server is not None
        found = await _until(worker.metrics_server.url,
                             lambda s: (s.get("sagaz_outbox_failed_total", broker="redis") or 0)
                             >= 2, "failed publishes counted")
        assert found.value("sagaz_outbox_published_total", broker="redis") == 0
        assert found.value("sagaz_outbox_pending_events") == 2
        assert found.get("sagaz_outbox_publish_latency_seconds_count") == 0
    finally:
        await worker.stop()
        await storage.close()
