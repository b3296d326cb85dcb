"""One outbox-store contract, the same test bodies against the real SQLite file and the real
PostgreSQL database: events commit with the step that emitted them; claims are exclusive (also
between processes), keep per-key order and expire; marks are fenced; refusals back off and
dead-letter; only failed deliveries count as attempts; a commit wakes the relay; the optimistic
send works and falls back to the relay."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from outbox_stores import KINDS, Box, open_box, sqlite_target

from sagaz import Saga, SagaConfig, SagaStatus
from sagaz.outbox.brokers.memory import InMemoryBroker
from sagaz.outbox.event import OutboxEvent
from sagaz.outbox.worker import OutboxWorker

CLAIM_CHILD = Path(__file__).with_name("claim_child.py")


@pytest.fixture(params=KINDS)
async def box(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Box]:
    kind: str = request.param
    target = sqlite_target(tmp_path) if kind == "sqlite" else request.getfixturevalue("pg_dsn")
    opened = open_box(kind, target)
    yield opened
    await opened.outbox.close()
    await opened.storage.close()


class _RefusingBroker(InMemoryBroker):
    """The subject here is the worker's failure path: a broker that refuses one event type."""

    def __init__(self, message: str = "rejected"):
        super().__init__()
        self.message = message

    async def publish_batch(self, events: Sequence[OutboxEvent]) -> list[BaseException | None]:
        return [RuntimeError(self.message) if e.event_type == "Poison" else None
                for e in events]


class _DownBroker(InMemoryBroker):
    """The subject is the fallback: a broker whose connection is gone."""

    async def publish_batch(self, events: Sequence[OutboxEvent]) -> list[BaseException | None]:
        raise ConnectionError("broker unreachable")


async def test_events_commit_with_their_step_and_failed_attempts_emit_nothing(box: Box) -> None:
    async def reserve(ctx: Any) -> None:
        ctx.emit("OrderReserved", {"order": ctx["order"]}, key=ctx["order"])

    async def charge(ctx: Any) -> None:
        ctx.emit("PaymentTried", {"attempt": ctx.attempt}, key=ctx["order"])
        if ctx.attempt == 1:
            raise RuntimeError("card timeout")

    saga = Saga(name="outbox-order", config=SagaConfig(storage=box.storage))
    saga.add_step("reserve", reserve)
    saga.add_step("charge", charge, max_retries=1)
    result = await saga.execute({"order": "A1"})
    assert result.status is SagaStatus.COMPLETED
    rows = box.rows()
    assert [(r.event_type, r.key, r.status) for r in rows] == [
        ("OrderReserved", "A1", "PENDING"), ("PaymentTried", "A1", "PENDING"),
        ("SagaCompleted", result.saga_id, "PENDING")]
    assert {r.saga_id for r in rows} == {result.saga_id}
    # PaymentTried waits for OrderReserved (same key); the lifecycle event has a key of its own.
    claimed = await box.outbox.claim("w", 10, 30)
    assert [c.event.event_type for c in claimed] == ["OrderReserved", "SagaCompleted"]


async def test_a_compensated_saga_emits_no_event_of_its_failed_step(box: Box) -> None:
    async def ok(ctx: Any) -> None:
        ctx.emit("Done", {"step": ctx.step})

    async def broken(ctx: Any) -> None:
        ctx.emit("NeverSent", {})
        raise RuntimeError("no")

    saga = Saga(name="outbox-compensated", config=SagaConfig(storage=box.storage))
    saga.add_step("a", ok, ok)
    saga.add_step("b", broken)
    assert (await saga.execute({})).status is SagaStatus.COMPENSATED
    assert [r.event_type for r in box.rows()] == ["Done", "Done", "SagaCompensated"]


async def test_the_relay_publishes_in_order_and_marks_sent(box: Box) -> None:
    broker = InMemoryBroker()
    events = [OutboxEvent("Paid", {"n": i}, key=f"k{i % 7}") for i in range(50)]
    await box.publish(events)
    await box.publish(events[:3])  # publishing an event id again adds nothing
    worker = OutboxWorker(box.outbox, broker, batch_size=20)
    while await worker.relay_once():
        pass
    assert worker.relayed == 50
    assert {(r.status, r.attempts, r.claimed_by) for r in box.rows()} == {("SENT", 0, None)}
    for key in {e.key for e in events}:
        sent = [e.payload["n"] for e in broker._log if e.key == key]
        assert sent == sorted(sent), f"key {key} published out of order: {sent}"
    assert await box.outbox.counts() == {"SENT": 50}


async def test_one_event_per_key_in_flight_and_keys_in_order(box: Box) -> None:
    await box.publish([OutboxEvent("E", {"i": i}, key="same") for i in range(3)]
                      + [OutboxEvent("E", {"i": 9}, key="other")])
    first = await box.outbox.claim("w1", 10, 30)
    assert [(c.event.key, c.event.payload["i"]) for c in first] == [("same", 0), ("other", 9)]
    assert await box.outbox.claim("w2", 10, 30) == [], "the next event of 'same' must wait"
    await box.outbox.mark_sent("w1", [c.event.event_id for c in first])
    second = await box.outbox.claim("w2", 10, 30)
    assert [c.event.payload["i"] for c in second] == [1]


async def test_concurrent_claims_never_share_a_row(box: Box) -> None:
    await box.publish([OutboxEvent("E", {"i": i}) for i in range(300)])
    batches = await asyncio.gather(*(box.outbox.claim(f"w{i}", 40, 30) for i in range(8)))
    ids = [c.event.event_id for batch in batches for c in batch]
    assert ids and len(ids) == len(set(ids))


async def test_claiming_processes_never_share_a_row_and_leave_none_behind(box: Box) -> None:
    events = [OutboxEvent("E", {"i": i}, key=None if i % 3 else f"k{i}") for i in range(1500)]
    await box.publish(events)
    claimed = await asyncio.to_thread(_claim_in_processes, box, 4)
    assert len(claimed) == len(set(claimed)), "an event was claimed by two processes"
    assert sorted(claimed) == sorted(e.event_id for e in events)


def _claim_in_processes(box: Box, processes: int) -> list[str]:
    """Run ``processes`` claiming processes at once; the ids they claimed, all together."""
    children = [subprocess.Popen(
        [sys.executable, str(CLAIM_CHILD), box.kind, box.target, f"proc{n}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(processes)]
    claimed: list[str] = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        claimed += json.loads(out)
    return claimed


async def test_an_expired_claim_is_taken_over_without_counting_an_attempt(box: Box) -> None:
    await box.publish([OutboxEvent("E", {})])
    dead_worker = await box.outbox.claim("dead", 10, 0.2)
    assert len(dead_worker) == 1
    assert await box.outbox.claim("alive", 10, 30) == []
    await asyncio.sleep(0.3)
    again = await box.outbox.claim("alive", 10, 30)
    assert [c.event.event_id for c in again] == [dead_worker[0].event.event_id]
    assert again[0].attempts == 0, "a takeover is no failed delivery"
    await box.outbox.mark_sent("dead", [again[0].event.event_id])  # fenced: not its claim
    assert await box.outbox.mark_failed("dead", [(again[0].event.event_id, "late")],
                                        max_attempts=1, base_backoff=1, max_backoff=1) == []
    assert await box.outbox.counts() == {"CLAIMED": 1}
    assert box.rows()[0].attempts == 0


async def test_a_release_gives_the_claims_back_without_an_attempt(box: Box) -> None:
    await box.publish([OutboxEvent("E", {"i": i}) for i in range(3)])
    claimed = await box.outbox.claim("w", 10, 30)
    await box.outbox.release("w", [c.event.event_id for c in claimed])
    assert {(r.status, r.attempts) for r in box.rows()} == {("PENDING", 0)}
    worker = OutboxWorker(box.outbox, _DownBroker())
    with pytest.raises(Exception) as lost:  # noqa: PT011 (the relay's internal signal)
        await worker.relay_once()
    assert isinstance(lost.value.__cause__, ConnectionError)
    assert {(r.status, r.attempts) for r in box.rows()} == {("PENDING", 0)}


async def test_refused_events_back_off_then_go_to_dead_letter(box: Box) -> None:
    await box.publish([OutboxEvent("Poison", {}), OutboxEvent("Fine", {})])
    # Backoffs of 1 s and 2 s: wide enough that a loaded machine's delay between the mark and
    # the look at it (next_in is measured then) cannot blur which one was applied.
    worker = OutboxWorker(box.outbox, _RefusingBroker(), max_attempts=3, base_backoff=1.0)
    await worker.relay_once()
    poison = next(r for r in box.rows() if r.event_type == "Poison")
    assert (poison.status, poison.attempts, poison.last_error) == (
        "FAILED", 1, "RuntimeError: rejected")
    # +50 ms: the store's clock and the one next_in is read against differ by a little.
    assert 0 < poison.next_in <= 1.05, "first retry after base_backoff"
    assert await worker.relay_once() == 0, "not due before its backoff"
    await asyncio.sleep(poison.next_in + 0.05)
    await worker.relay_once()
    poison = next(r for r in box.rows() if r.event_type == "Poison")
    assert (poison.status, poison.attempts) == ("FAILED", 2)
    assert 1.0 < poison.next_in <= 2.05, "the second retry waits base_backoff * 2"
    await asyncio.sleep(poison.next_in + 0.05)
    await worker.relay_once()
    assert worker.dead_lettered == 1
    dead = await box.outbox.dead_letters()
    assert [(d.event_type, d.attempts, d.last_error) for d in dead] == [
        ("Poison", 3, "RuntimeError: rejected")]
    assert await box.outbox.retry_dead() == 1
    assert [c.event.event_type for c in await box.outbox.claim("w", 10, 30)] == ["Poison"]
    assert (await box.outbox.counts()).get("SENT") == 1
    await box.outbox.release("w", [dead[0].event_id])
    assert await box.outbox.purge_dead() == 0, "only dead letters are purged"


async def test_a_broker_error_is_stored_without_secrets_or_unstorable_characters(
    box: Box
) -> None:
    await box.publish([OutboxEvent("Poison", {})])
    message = "refused by amqp://relay:s3cr3t@mq:5672/ at \x00 \ud800 " + "x" * 5000
    await OutboxWorker(box.outbox, _RefusingBroker(message)).relay_once()
    (row,) = box.rows()
    assert row.attempts == 1 and row.last_error is not None
    assert "s3cr3t" not in row.last_error and "\x00" not in row.last_error
    assert row.last_error.startswith("RuntimeError: refused by amqp://relay:")
    assert "\\x00 \\ud800" in row.last_error and len(row.last_error) <= 2000


async def test_a_commit_wakes_an_idle_relay_long_before_its_poll(box: Box) -> None:
    worker = OutboxWorker(box.outbox, InMemoryBroker(), concurrency=2, poll_interval=5)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await asyncio.sleep(0.3)

    async def ship(ctx: Any) -> None:
        ctx.emit("Shipped", {})

    saga = Saga(name="wake", config=SagaConfig(storage=box.storage, lifecycle_events=False))
    saga.add_step("ship", ship)
    await saga.run({})
    for _ in range(150):
        if worker.relayed:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(running, 15)
    assert worker.relayed == 1, "the commit did not wake the relay within 1.5 s (poll: 5 s)"


async def test_optimistic_send_publishes_right_after_the_commit(box: Box) -> None:
    worker = OutboxWorker(box.outbox, InMemoryBroker())  # no relay loop: only the hook
    worker.send_optimistically(box.storage)

    async def step(ctx: Any) -> None:
        ctx.emit("Shipped", {"to": "A1"}, key="A1")

    saga = Saga(name="optimistic", config=SagaConfig(storage=box.storage))
    saga.add_step("ship", step)
    await saga.run({})
    for _ in range(100):
        if await box.outbox.counts() == {"SENT": 2}:
            break
        await asyncio.sleep(0.02)
    assert await box.outbox.counts() == {"SENT": 2}
    assert worker.relayed == 2


async def test_a_failed_optimistic_send_leaves_the_events_to_the_relay(box: Box) -> None:
    OutboxWorker(box.outbox, _DownBroker()).send_optimistically(box.storage)

    async def step(ctx: Any) -> None:
        ctx.emit("Shipped", {}, key="B2")

    saga = Saga(name="optimistic-down", config=SagaConfig(storage=box.storage))
    saga.add_step("ship", step)
    await saga.run({})
    relay = OutboxWorker(box.outbox, InMemoryBroker())
    for _ in range(100):  # the optimistic attempt may still hold them for a moment
        await relay.relay_once()
        if relay.relayed == 2:
            break
        await asyncio.sleep(0.02)
    assert await box.outbox.counts() == {"SENT": 2}
    assert {r.attempts for r in box.rows()} == {0}
