"""The audit log on the in-memory storage: what a saga's history records, in which order, and
that failed attempts ride along with the next commit instead of costing a write each."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from sagaz import RetryPolicy, Saga, SagaConfig, SagaContext, SagaStatus
from sagaz.engine.types import SagaState, StepState, StepStatus
from sagaz.errors import LeaseLostError
from sagaz.redact import redact_text
from sagaz.storage.audit import MAX_ERROR_CHARS, AuditEntry, clip_error, entries_of
from sagaz.storage.base import UnitOfWork
from sagaz.storage.memory import InMemorySagaStorage

FAST = RetryPolicy(base_delay=0.001, max_delay=0.002)


class CountingStorage(InMemorySagaStorage):
    """Counts the durable writes the engine asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.commits = 0

    async def commit(self, work: UnitOfWork, lease_seconds: float) -> None:
        self.commits += 1
        await super().commit(work, lease_seconds)


def flaky_order(storage: InMemorySagaStorage, *, charge_fails: int, undo_fails: int = 0) -> Saga:
    """reserve -> charge -> ship; charge fails its first ``charge_fails`` attempts (of 3)."""
    calls = {"charge": 0, "undo": 0}

    async def reserve(ctx: SagaContext) -> dict[str, Any]:
        return {"reserved": True}

    async def charge(ctx: SagaContext) -> None:
        calls["charge"] += 1
        if calls["charge"] <= charge_fails:
            raise ConnectionError(f"bank down (try {calls['charge']})")

    async def ship(ctx: SagaContext) -> None:
        return None

    async def unreserve(ctx: SagaContext) -> None:
        calls["undo"] += 1
        if calls["undo"] <= undo_fails:
            raise TimeoutError("stock service slow")

    saga = Saga(name="audited-order", config=SagaConfig(storage=storage), retry_policy=FAST)
    saga.add_step("reserve", reserve, unreserve, max_retries=2)
    saga.add_step("charge", charge, max_retries=2)
    saga.add_step("ship", ship)
    return saga


def story(history: list[AuditEntry]) -> list[tuple[str, str | None, int | None, str | None]]:
    return [(e.event, e.step, e.attempt, e.error) for e in history]


async def test_a_completed_saga_records_only_its_completion() -> None:
    """Its creation and its steps' completions are in the saga and step rows: no audit rows."""
    storage = InMemorySagaStorage()
    result = await flaky_order(storage, charge_fails=0).execute({})
    assert result.status is SagaStatus.COMPLETED
    history = await storage.get_history(result.saga_id)
    assert [(e.event, e.details) for e in history] == [
        ("saga_completed", {"status": "COMPLETED"})]
    assert history[0].at is not None


async def test_failed_compensation_attempts_and_a_failed_saga_are_recorded() -> None:
    storage = InMemorySagaStorage()
    result = await flaky_order(storage, charge_fails=3, undo_fails=3).execute({})
    assert result.status is SagaStatus.FAILED
    tail = story(await storage.get_history(result.saga_id))[-5:]
    assert tail == [
        ("compensation_attempt_failed", "reserve", 1, "TimeoutError: stock service slow"),
        ("compensation_attempt_failed", "reserve", 2, "TimeoutError: stock service slow"),
        ("compensation_attempt_failed", "reserve", 3, "TimeoutError: stock service slow"),
        ("step_compensation_failed", "reserve", 1, "TimeoutError: stock service slow"),
        ("saga_failed", None, None, None),
    ]


async def test_retried_attempts_ride_along_with_the_next_commit() -> None:
    """Failed attempts cost no durable write of their own: a saga whose step succeeds at its
    third attempt commits exactly as often as one that never failed."""
    calm, flaky = CountingStorage(), CountingStorage()
    await flaky_order(calm, charge_fails=0).run({})
    result = await flaky_order(flaky, charge_fails=2).execute({})
    assert result.status is SagaStatus.COMPLETED
    assert flaky.commits == calm.commits
    events = [e.event for e in await flaky.get_history(result.saga_id)]
    assert events == ["attempt_failed", "attempt_failed", "saga_completed"]


async def test_a_fenced_out_commit_records_nothing() -> None:
    storage = InMemorySagaStorage()
    state = SagaState(str(uuid.uuid4()), "x", SagaStatus.RUNNING, {}, lease_owner="holder")
    await storage.create(state, 30)
    stale = UnitOfWork(state.saga_id, "stale", status=SagaStatus.COMPENSATING, error="late",
                       failed_attempts=[AuditEntry("attempt_failed", {"step": "a"}, 1.0)])
    with pytest.raises(LeaseLostError):
        await storage.commit(stale, 30)
    assert await storage.get_history(state.saga_id) == []


async def test_the_read_only_view_sees_the_history_and_unknown_sagas_have_none() -> None:
    storage = InMemorySagaStorage()
    result = await flaky_order(storage, charge_fails=0).execute({})
    assert len(await storage.reader().get_history(result.saga_id)) == 1
    assert await storage.get_history(str(uuid.uuid4())) == []


def test_entries_name_the_transitions_of_a_unit_of_work() -> None:
    attempt = AuditEntry("attempt_failed", {"step": "b", "attempt": 1}, 5.0)
    work = UnitOfWork("id", "me", status=SagaStatus.COMPENSATING, failed_step="b", error="E: x",
                      failed_attempts=[attempt],
                      steps=[StepState("a", StepStatus.COMPLETED, attempts=1),
                             StepState("b", StepStatus.FAILED, error="E: x", attempts=2),
                             StepState("c", StepStatus.UNKNOWN)])
    assert entries_of(work) == [
        attempt,
        # A completion is kept by the step's own row: no audit row for it.
        AuditEntry("step_failed", {"step": "b", "attempt": 2, "error": "E: x"}),
        AuditEntry("step_unknown", {"step": "c", "attempt": 0}),
        AuditEntry("saga_compensating", {"status": "COMPENSATING", "step": "b",
                                         "error": "E: x"}),
    ]
    assert entries_of(UnitOfWork("id", "me", context={"k": 1})) == []


def test_errors_are_redacted_cut_and_storable() -> None:
    clipped = clip_error("x" * 10_000)
    assert len(clipped) == MAX_ERROR_CHARS and clipped.endswith("\u2026")
    # Redacted before the cut: a password across the limit does not leak its first half.
    near_limit = "y" * (MAX_ERROR_CHARS - 30) + " postgresql://app:s3cretpassword@db/x"
    assert "s3cret" not in clip_error(near_limit)
    assert clip_error("nul\x00 and lone \ud800 surrogate") == "nul\\x00 and lone \\ud800 surrogate"


@pytest.mark.parametrize(("text", "shown"), [
    ("connect to postgresql://app:s3cret@db:5432/x failed",
     "connect to postgresql://app:***@db:5432/x failed"),
    ("host=db password=s3cret user=app", "host=db password=*** user=app"),
    ("PASSWORD = 's3 cret'; next", "PASSWORD = ***; next"),
    ("amqp://u:s3@cret@h/v?token=s3cret&x=1", "amqp://u:***@h/v?token=***&x=1"),
    ("nothing secret: a=b, http://host:80/x a@b", "nothing secret: a=b, http://host:80/x a@b"),
])
def test_secrets_in_free_text_are_hidden(text: str, shown: str) -> None:
    assert redact_text(text) == shown
