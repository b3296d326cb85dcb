"""The transactional outbox on real PostgreSQL, what only PostgreSQL has: publishing in the
caller's transaction, LISTEN/NOTIFY, and the consumer inbox that makes effects exactly once. What
every outbox store does (claims, order, backoff, dead letters, attempts, the optimistic send) is
the contract in tests/integration/outbox/test_store_contract.py, run on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from sagaz import ConfigurationError, StorageError
from sagaz.outbox.brokers.memory import InMemoryBroker
from sagaz.outbox.event import OutboxEvent
from sagaz.outbox.inbox import ConsumerInbox, consume
from sagaz.outbox.worker import OutboxWorker
from sagaz.storage.postgresql import PostgreSQLSagaStorage
from sagaz.storage.postgresql.outbox import PostgreSQLOutbox


@pytest.fixture
async def pg(pg_dsn: str) -> AsyncIterator[PostgreSQLSagaStorage]:
    storage = PostgreSQLSagaStorage(pg_dsn)
    yield storage
    await storage.close()


@pytest.fixture
async def outbox(pg: PostgreSQLSagaStorage, pg_dsn: str) -> AsyncIterator[PostgreSQLOutbox]:
    box = PostgreSQLOutbox(pg, listen_dsn=pg_dsn)
    yield box
    await box.close()


def _rows(dsn: str, where: str = "true") -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT event_type, aggregate_id, saga_id::text, status, payload FROM saga_outbox "
            f"WHERE {where} ORDER BY seq").fetchall()


async def test_publish_in_the_callers_transaction(outbox: PostgreSQLOutbox, pg_dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        await outbox.publish([OutboxEvent("RolledBack", {})], connection=conn)
        await conn.rollback()
        async with conn.transaction():
            await conn.execute("CREATE TABLE orders (id text)")
            await conn.execute("INSERT INTO orders VALUES ('A1')")
            await outbox.publish([OutboxEvent("OrderPlaced", {"id": "A1"}, key="A1")],
                                 connection=conn)
    assert [r[0] for r in _rows(pg_dsn)] == ["OrderPlaced"]


async def test_relay_publishes_marks_sent_and_the_inbox_applies_each_event_once(
    outbox: PostgreSQLOutbox, pg: PostgreSQLSagaStorage, pg_dsn: str
) -> None:
    broker = InMemoryBroker()
    events = [OutboxEvent("Paid", {"n": i}, key=f"k{i % 7}") for i in range(50)]
    await outbox.publish(events)
    worker = OutboxWorker(outbox, broker, batch_size=20)
    await broker.connect()
    while await worker.relay_once():
        pass
    assert worker.relayed == 50 and {r[3] for r in _rows(pg_dsn)} == {"SENT"}
    # At least once on the wire: publish everything a second time, as a relay that died before
    # marking would. The inbox applies each event once.
    assert await broker.publish_batch(events) == [None] * 50
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE ledger (event_id uuid, n int)")
    inbox = ConsumerInbox(pg, "ledger")

    async def apply(event: OutboxEvent, connection: Any) -> None:
        await connection.execute("INSERT INTO ledger VALUES (%s, %s)",
                                 (event.event_id, event.payload["n"]))

    stop = asyncio.get_running_loop().create_future()
    consumer = asyncio.create_task(consume(broker, "ledger", apply, stop=stop, inbox=inbox))
    for _ in range(200):
        if inbox.processed + inbox.duplicates >= 100:
            break
        await asyncio.sleep(0.02)
    stop.set_result(None)
    await consumer
    with psycopg.connect(pg_dsn) as conn:
        ledger = conn.execute("SELECT count(*), count(DISTINCT event_id) FROM ledger").fetchone()
    assert ledger == (50, 50)
    assert (inbox.processed, inbox.duplicates) == (50, 50)


async def test_a_handler_that_raises_leaves_no_inbox_row(
    pg: PostgreSQLSagaStorage, pg_dsn: str
) -> None:
    inbox = ConsumerInbox(pg, "flaky")
    calls: list[int] = []

    async def handler(connection: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first delivery fails")

    event_id = OutboxEvent("X", {}).event_id
    with pytest.raises(RuntimeError):
        await inbox.process(event_id, handler)
    assert await inbox.process(event_id, handler) is True
    assert await inbox.process(event_id, handler) is False
    assert len(calls) == 2
    other = ConsumerInbox(pg, "another-consumer")
    assert await other.process(event_id, handler) is True


async def test_listen_notify_wakes_the_worker(outbox: PostgreSQLOutbox) -> None:
    waiting = asyncio.create_task(outbox.wait(10))
    await asyncio.sleep(0.2)
    await outbox.publish([OutboxEvent("Wake", {})])
    await asyncio.wait_for(waiting, 5)


async def test_concurrent_inbox_calls_share_transactions_and_one_failure_stays_alone(
    pg: PostgreSQLSagaStorage, pg_dsn: str
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE hits (n int)")
    inbox = ConsumerInbox(pg, "batched")
    ids = [OutboxEvent("X", {}).event_id for _ in range(100)]

    async def handler(n: int, connection: Any) -> None:
        if n == 37:
            raise ValueError("poison")
        await connection.execute("INSERT INTO hits VALUES (%s)", (n,))

    outcomes = await asyncio.gather(*(inbox.process(i, handler, n) for n, i in enumerate(ids)),
                                    return_exceptions=True)
    failed = [n for n, o in enumerate(outcomes) if isinstance(o, BaseException)]
    assert failed == [37] and isinstance(outcomes[37], ValueError)
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT n) FROM hits").fetchone() == (99, 99)
        inbox_rows = conn.execute("SELECT count(*) FROM consumer_inbox").fetchone()
    assert inbox_rows == (99,)


async def test_an_idle_worker_costs_one_claim_per_interval_and_a_notify_wakes_it(
    outbox: PostgreSQLOutbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims = 0
    real_claim = outbox.claim

    async def counting_claim(*args: Any) -> Any:
        nonlocal claims
        claims += 1
        return await real_claim(*args)

    monkeypatch.setattr(outbox, "claim", counting_claim)
    broker = InMemoryBroker()
    worker = OutboxWorker(outbox, broker, concurrency=3, poll_interval=0.25)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await asyncio.sleep(1.3)
    idle_claims = claims
    # One claim per loop at start, then one per interval for the whole worker (not per loop).
    assert idle_claims <= 3 + 6, idle_claims
    await outbox.publish(OutboxEvent("Late", {}))  # its NOTIFY wakes one loop before the poll
    for _ in range(100):
        if worker.relayed:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await running
    assert worker.relayed == 1


async def test_a_handler_that_swallows_a_database_error_is_not_acknowledged(
    pg: PostgreSQLSagaStorage, pg_dsn: str
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE hits (n int)")
    inbox = ConsumerInbox(pg, "careless")

    async def handler(connection: Any) -> None:
        await connection.execute("INSERT INTO hits VALUES (1)")
        # The transaction is aborted after this: its COMMIT would silently roll back.
        with contextlib.suppress(psycopg.Error):
            await connection.execute("SELECT 1 / 0")

    with pytest.raises(StorageError, match="rolled back"):
        await inbox.process(OutboxEvent("X", {}).event_id, handler)
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM hits").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM consumer_inbox").fetchone() == (0,)


def test_a_malformed_dsn_is_refused_without_showing_its_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        PostgreSQLSagaStorage("postgresql://app:se%zzcret@db:5432/app")
    assert "se%zzcret" not in str(caught.value) and "zzcret" not in str(caught.value)
