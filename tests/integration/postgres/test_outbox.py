"""The transactional outbox on real PostgreSQL: events commit with the step that emitted them,
the relay claims with SKIP LOCKED, keeps per-key order, retries with backoff, dead-letters, and
the consumer inbox makes effects exactly once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
import pytest

from sagaz import ConfigurationError, Saga, SagaConfig, SagaStatus, StorageError
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


async def test_events_commit_with_their_step_and_failed_attempts_emit_nothing(
    pg: PostgreSQLSagaStorage, pg_dsn: str
) -> None:
    attempts = {"charge": 0}

    async def reserve(ctx: Any) -> None:
        ctx.emit("OrderReserved", {"order": ctx["order"]}, key=ctx["order"])

    async def charge(ctx: Any) -> None:
        attempts["charge"] += 1
        ctx.emit("PaymentTried", {"attempt": ctx.attempt}, key=ctx["order"])
        if ctx.attempt == 1:
            raise RuntimeError("card timeout")

    saga = Saga(name="outbox-order", config=SagaConfig(storage=pg))
    saga.add_step("reserve", reserve)
    saga.add_step("charge", charge, max_retries=1)
    result = await saga.execute({"order": "A1"})
    assert result.status is SagaStatus.COMPLETED and attempts["charge"] == 2
    rows = _rows(pg_dsn)
    assert [(r[0], r[1], r[3]) for r in rows] == [
        ("OrderReserved", "A1", "PENDING"), ("PaymentTried", "A1", "PENDING"),
        ("SagaCompleted", result.saga_id, "PENDING")]
    assert rows[1][4] == {"attempt": 2}, "the failed attempt's event must not be written"
    assert {r[2] for r in rows} == {result.saga_id}


async def test_a_compensated_saga_emits_no_event_of_its_failed_step(
    pg: PostgreSQLSagaStorage, pg_dsn: str
) -> None:
    async def ok(ctx: Any) -> None:
        ctx.emit("Done", {"step": ctx.step})

    async def broken(ctx: Any) -> None:
        ctx.emit("NeverSent", {})
        raise RuntimeError("no")

    saga = Saga(name="outbox-compensated", config=SagaConfig(storage=pg))
    saga.add_step("a", ok, ok)
    saga.add_step("b", broken)
    result = await saga.execute({})
    assert result.status is SagaStatus.COMPENSATED
    assert [r[0] for r in _rows(pg_dsn)] == ["Done", "Done", "SagaCompensated"]


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


async def test_one_event_per_key_in_flight_and_keys_in_order(outbox: PostgreSQLOutbox) -> None:
    await outbox.publish([OutboxEvent("E", {"i": i}, key="same") for i in range(3)]
                         + [OutboxEvent("E", {"i": 9}, key="other")])
    first = await outbox.claim("w1", 10, 30)
    assert [(c.event.key, c.event.payload["i"]) for c in first] == [("same", 0), ("other", 9)]
    assert await outbox.claim("w2", 10, 30) == [], "the next event of 'same' must wait"
    await outbox.mark_sent("w1", [c.event.event_id for c in first])
    second = await outbox.claim("w2", 10, 30)
    assert [c.event.payload["i"] for c in second] == [1]


async def test_concurrent_claims_never_share_a_row(outbox: PostgreSQLOutbox) -> None:
    await outbox.publish([OutboxEvent("E", {"i": i}) for i in range(300)])
    batches = await asyncio.gather(*(outbox.claim(f"w{i}", 40, 30) for i in range(8)))
    ids = [c.event.event_id for batch in batches for c in batch]
    # SKIP LOCKED: a claim passes over rows another one holds, so together they may take fewer
    # than all; never one row twice.
    assert ids and len(ids) == len(set(ids))


async def test_an_expired_claim_is_published_again(outbox: PostgreSQLOutbox) -> None:
    await outbox.publish([OutboxEvent("E", {})])
    dead_worker = await outbox.claim("dead", 10, 0.2)
    assert len(dead_worker) == 1
    assert await outbox.claim("alive", 10, 30) == []
    await asyncio.sleep(0.3)
    again = await outbox.claim("alive", 10, 30)
    assert [c.event.event_id for c in again] == [dead_worker[0].event.event_id]
    assert again[0].attempts == 2
    await outbox.mark_sent("dead", [again[0].event.event_id])  # fenced: not its claim any more
    assert (await outbox.counts()).get("CLAIMED") == 1


class _RefusingBroker(InMemoryBroker):
    """The subject here is the worker's failure path: a broker that refuses one event type."""

    async def publish_batch(self, events: Sequence[OutboxEvent]) -> list[BaseException | None]:
        return [RuntimeError("rejected") if e.event_type == "Poison" else None for e in events]


async def test_refused_events_back_off_then_go_to_dead_letter(
    outbox: PostgreSQLOutbox, pg_dsn: str
) -> None:
    await outbox.publish([OutboxEvent("Poison", {}), OutboxEvent("Fine", {})])
    worker = OutboxWorker(outbox, _RefusingBroker(), max_attempts=3, base_backoff=0.2)
    await worker.relay_once()
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            "SELECT status, attempts, last_error, extract(epoch FROM next_attempt_at - now()) "
            "FROM saga_outbox WHERE event_type = 'Poison'").fetchone()
    assert row is not None and row[:3] == ("FAILED", 1, "RuntimeError: rejected")
    assert 0.05 < row[3] <= 0.2, "first retry after base_backoff"
    assert await worker.relay_once() == 0, "not due before its backoff"
    for _ in range(2):
        await asyncio.sleep(0.45)
        await worker.relay_once()
    assert worker.dead_lettered == 1
    dead = await outbox.dead_letters()
    assert [(d.event_type, d.attempts, d.last_error) for d in dead] == [
        ("Poison", 3, "RuntimeError: rejected")]
    assert await outbox.retry_dead() == 1
    assert await outbox.claim("w", 10, 30) != []
    assert (await outbox.counts()).get("SENT") == 1


async def test_listen_notify_wakes_the_worker(outbox: PostgreSQLOutbox) -> None:
    waiting = asyncio.create_task(outbox.wait(10))
    await asyncio.sleep(0.2)
    await outbox.publish([OutboxEvent("Wake", {})])
    await asyncio.wait_for(waiting, 5)


async def _eventually_counts(outbox: PostgreSQLOutbox, expected: dict[str, int]) -> None:
    for _ in range(100):
        if await outbox.counts() == expected:
            return
        await asyncio.sleep(0.02)
    assert await outbox.counts() == expected


async def test_optimistic_send_publishes_right_after_the_commit(
    pg: PostgreSQLSagaStorage, outbox: PostgreSQLOutbox
) -> None:
    broker = InMemoryBroker()
    await broker.connect()
    worker = OutboxWorker(outbox, broker)  # its relay loop is not running: only the hook
    worker.send_optimistically(pg)

    async def step(ctx: Any) -> None:
        ctx.emit("Shipped", {"to": "A1"}, key="A1")

    saga = Saga(name="optimistic", config=SagaConfig(storage=pg))
    saga.add_step("ship", step)
    await saga.run({})
    await _eventually_counts(outbox, {"SENT": 2})
    assert worker.relayed == 2


class _DownBroker(InMemoryBroker):
    """The subject is the fallback: a broker whose connection is gone."""

    async def publish_batch(self, events: Sequence[OutboxEvent]) -> list[BaseException | None]:
        raise ConnectionError("broker unreachable")


async def test_a_failed_optimistic_send_leaves_the_events_to_the_relay(
    pg: PostgreSQLSagaStorage, outbox: PostgreSQLOutbox
) -> None:
    OutboxWorker(outbox, _DownBroker()).send_optimistically(pg)

    async def step(ctx: Any) -> None:
        ctx.emit("Shipped", {}, key="B2")

    saga = Saga(name="optimistic-down", config=SagaConfig(storage=pg))
    saga.add_step("ship", step)
    await saga.run({})
    relay = OutboxWorker(outbox, InMemoryBroker())
    for _ in range(100):  # the optimistic attempt may still hold them for a moment
        await relay.relay_once()
        if relay.relayed == 2:
            break
        await asyncio.sleep(0.02)
    assert await outbox.counts() == {"SENT": 2}


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
