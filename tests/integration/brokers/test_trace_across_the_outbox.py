"""One OpenTelemetry trace from a saga's step through the outbox relay to a consumer: real
PostgreSQL storage (the traceparent is stored with the outbox row), real Redis Streams between
relay and consumer, the SDK's in-memory exporter collecting the spans."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from conftest import REDIS_URL, require_service
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from sagaz import Saga, SagaConfig, action, compensate
from sagaz.observability.tracing import SagaTracer
from sagaz.outbox.event import OutboxEvent
from sagaz.outbox.inbox import ConsumerInbox, consume
from sagaz.outbox.worker import OutboxWorker
from sagaz.storage.postgresql import PostgreSQLSagaStorage


class TracedOrder(Saga):
    saga_name = "traced-order"

    @action("reserve")
    async def reserve(self, ctx: Any) -> None:
        ctx.emit("StockReserved", {"order": ctx["order"]}, key=ctx["order"])

    @compensate("reserve")
    async def release(self, ctx: Any) -> None:
        ctx.emit("StockReleased", {"order": ctx["order"]}, key=ctx["order"])

    @action("charge")
    async def charge(self, ctx: Any) -> None:
        if ctx.get("decline"):
            raise RuntimeError("card declined")


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture
async def storage(pg_dsn: str) -> AsyncIterator[PostgreSQLSagaStorage]:
    store = PostgreSQLSagaStorage(pg_dsn)
    yield store
    await store.close()


def _one(found: list[ReadableSpan], name: str) -> ReadableSpan:
    matching = [s for s in found if s.name == name]
    assert len(matching) == 1, (name, [s.name for s in found])
    return matching[0]


def _is_child(child: ReadableSpan, parent: ReadableSpan) -> bool:
    assert child.parent is not None and parent.context is not None
    return (child.parent.span_id == parent.context.span_id
            and child.context is not None
            and child.context.trace_id == parent.context.trace_id)


async def test_one_trace_runs_from_the_saga_through_the_relay_to_the_consumer(
    spans: tuple[TracerProvider, InMemorySpanExporter], storage: PostgreSQLSagaStorage,
    pg_dsn: str, unique: str,
) -> None:
    require_service("redis", REDIS_URL, 6379)
    from sagaz.outbox.brokers.redis import RedisStreamsBroker

    provider, exporter = spans
    tracer = SagaTracer(provider)
    saga = TracedOrder()
    saga.config = SagaConfig(storage=storage, listeners=[tracer], lifecycle_events=False)
    await saga.run({"order": "A1"})
    with pytest.raises(Exception, match="declined"):
        await saga.run({"order": "B2", "decline": True})
    with psycopg.connect(pg_dsn) as conn:
        stored = conn.execute("SELECT event_type, headers->>'traceparent' FROM saga_outbox "
                              "ORDER BY seq").fetchall()
    assert [t for t, _ in stored] == ["StockReserved", "StockReserved", "StockReleased"]
    assert all(tp and tp.startswith("00-") for _, tp in stored)

    broker = RedisStreamsBroker(REDIS_URL, f"sagaz:test:{unique}", claim_idle=0.3)
    try:
        worker = OutboxWorker(storage.outbox_store(), broker, publish_hooks=[tracer])
        await broker.connect()
        while await worker.relay_once():
            pass
        assert worker.relayed == 3
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE seen (event_type text, order_id text)")
        inbox = ConsumerInbox(storage, "stock")

        async def record(event: OutboxEvent, connection: Any) -> None:
            await connection.execute("INSERT INTO seen VALUES (%s, %s)",
                                     (event.event_type, event.payload["order"]))

        stop = asyncio.get_running_loop().create_future()
        consumer = asyncio.create_task(
            consume(broker, "stock", record, stop=stop, inbox=inbox, hooks=[tracer]))
        for _ in range(250):
            if inbox.processed >= 3:
                break
            await asyncio.sleep(0.02)
        stop.set_result(None)
        await consumer
        assert inbox.processed == 3
    finally:
        await broker.close()
        await broker.destroy()

    found = list(exporter.get_finished_spans())
    assert tracer.open_spans() == 0
    # The first saga: saga -> step reserve -> publish -> consume, one trace.
    sagas = [s for s in found if s.name == "saga traced-order"]
    assert len(sagas) == 2
    statuses = {s.attributes["sagaz.status"] if s.attributes else None: s for s in sagas}
    assert set(statuses) == {"COMPLETED", "COMPENSATED"}, statuses
    ok, failed = statuses["COMPLETED"], statuses["COMPENSATED"]
    assert failed.status.status_code is StatusCode.ERROR
    reserves = [s for s in found if s.name == "step reserve" and _is_child(s, ok)]
    assert len(reserves) == 1
    publishes = [s for s in found if s.name == "publish StockReserved"
                 and _is_child(s, reserves[0])]
    assert len(publishes) == 1 and publishes[0].kind is SpanKind.PRODUCER
    consumed = [s for s in found if s.name == "consume StockReserved"
                and _is_child(s, publishes[0])]
    assert len(consumed) == 1 and consumed[0].kind is SpanKind.CONSUMER
    # The failed saga: its failed step and its compensation are its children, and the
    # compensation's counter-event continues that trace through relay and consumer.
    charge = [s for s in found if s.name == "step charge" and _is_child(s, failed)]
    assert len(charge) == 1 and charge[0].status.status_code is StatusCode.ERROR
    release = _one(found, "compensate reserve")
    assert _is_child(release, failed)
    released = _one(found, "publish StockReleased")
    assert _is_child(released, release)
    assert _is_child(_one(found, "consume StockReleased"), released)


def test_without_opentelemetry_sagaz_imports_and_runs() -> None:
    """The extra is optional: with ``opentelemetry`` unimportable, sagaz, the engine, the relay
    and the consumer still import and a saga runs; only the tracing module needs it."""
    script = """
import asyncio, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import sagaz, sagaz.outbox.worker, sagaz.outbox.inbox, sagaz.cli.app, sagaz.observability
from sagaz import Saga, SagaConfig, action
from sagaz.storage.memory import InMemorySagaStorage
class S(Saga):
    saga_name = "untraced"
    @action("a")
    async def a(self, ctx):
        ctx.emit("A", {})
s = S(); s.config = SagaConfig(storage=InMemorySagaStorage())
print(asyncio.run(s.run({"x": 1}))["x"])
assert not [m for m in sys.modules if m.startswith("opentelemetry")]
try:
    import sagaz.observability.tracing
except ImportError as exc:
    print("tracing needs the extra:", exc)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["1", "tracing needs the extra: blocked: opentelemetry"]
