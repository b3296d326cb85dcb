"""The audit log contract, one body per test for every storage (memory, SQLite file, a real
PostgreSQL): the ordered history of a saga, and audit rows that commit with their transition or
not at all."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sagaz import LeaseLostError, RetryPolicy, Saga, SagaConfig, SagaContext, SagaStatus
from sagaz.engine.types import SagaState
from sagaz.errors import StorageError
from sagaz.outbox.event import OutboxEvent
from sagaz.storage.audit import AuditEntry, failed_attempt
from sagaz.storage.base import SagaStorage, UnitOfWork
from sagaz.storage.memory import InMemorySagaStorage
from sagaz.storage.postgresql import PostgreSQLSagaStorage
from sagaz.storage.postgresql.batch import Pending
from sagaz.storage.postgresql.storage import _write_batch
from sagaz.storage.sqlite import SQLiteSagaStorage

FAST = RetryPolicy(base_delay=0.001, max_delay=0.002)
LEASE = 30.0


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SagaStorage]:
    store: SagaStorage
    if request.param == "memory":
        store = InMemorySagaStorage()
    elif request.param == "sqlite":
        store = SQLiteSagaStorage(tmp_path / "sagas.db")
    else:
        store = PostgreSQLSagaStorage(request.getfixturevalue("pg_dsn"))
    yield store
    await store.close()


def order_saga(storage: SagaStorage, charge_error: str = "bank down") -> Saga:
    """reserve -> charge; charge fails all 3 of its attempts, so reserve is compensated."""
    calls = {"n": 0}

    async def reserve(ctx: SagaContext) -> dict[str, Any]:
        return {"reserved": True}

    async def charge(ctx: SagaContext) -> None:
        calls["n"] += 1
        raise ConnectionError(f"{charge_error} (try {calls['n']})")

    async def unreserve(ctx: SagaContext) -> None:
        return None

    saga = Saga(name="audited", config=SagaConfig(storage=storage), retry_policy=FAST)
    saga.add_step("reserve", reserve, unreserve)
    saga.add_step("charge", charge, unreserve, max_retries=2)
    return saga


def story(history: list[AuditEntry]) -> list[tuple[str, str | None, int | None, str | None]]:
    return [(e.event, e.step, e.attempt, e.error) for e in history]


def new_state(owner: str = "holder") -> SagaState:
    return SagaState(str(uuid.uuid4()), "audited", SagaStatus.RUNNING, {}, lease_owner=owner)


async def test_a_retried_failing_step_and_its_compensation_tell_an_ordered_history(
    storage: SagaStorage,
) -> None:
    result = await order_saga(storage).execute({})
    assert result.status is SagaStatus.COMPENSATED
    history = await storage.get_history(result.saga_id)
    last = "ConnectionError: bank down (try 3)"
    assert story(history) == [
        ("attempt_failed", "charge", 1, "ConnectionError: bank down (try 1)"),
        ("attempt_failed", "charge", 2, "ConnectionError: bank down (try 2)"),
        ("attempt_failed", "charge", 3, last),
        ("step_failed", "charge", 3, last),
        ("saga_compensating", "charge", None, last),
        ("step_compensated", "reserve", 1, None),
        ("saga_compensated", None, None, None),
    ]
    times = [e.at for e in history]
    assert all(t is not None for t in times)
    assert times == sorted(times)  # type: ignore[type-var]


async def test_a_completed_saga_has_one_row(
    storage: SagaStorage,
) -> None:
    async def ok(ctx: SagaContext) -> None:
        return None

    saga = Saga(name="calm", config=SagaConfig(storage=storage))
    for name in ("a", "b", "c"):
        saga.add_step(name, ok)
    result = await saga.execute({})
    assert [e.event for e in await storage.get_history(result.saga_id)] == ["saga_completed"]
    assert await storage.get_history(str(uuid.uuid4())) == []


async def test_error_messages_are_redacted_and_cut(storage: SagaStorage) -> None:
    message = "postgresql://app:s3cret@db/x refused " + "z" * 5_000
    result = await order_saga(storage, message).execute({})
    assert result.status is SagaStatus.COMPENSATED
    history = await storage.get_history(result.saga_id)
    failed = [e for e in history if e.event == "attempt_failed"]
    assert len(failed) == 3
    for entry in history:
        assert "s3cret" not in str(entry.details)
        assert len(entry.details.get("error", "")) <= 2_000
    assert failed[0].details["error"].startswith("postgresql://app:***@db/x refused zzz")
    assert len(failed[0].details["error"]) == 2_000


async def test_an_error_text_no_database_can_store_still_commits(storage: SagaStorage) -> None:
    """An exception may carry a NUL or a lone surrogate, which PostgreSQL's jsonb refuses: the
    audit row must never be the reason a transition fails."""
    state = new_state()
    await storage.create(state, LEASE)
    attempt = failed_attempt("a", 1, ValueError("nul \x00 and lone \ud800 here"), 1.0)
    await storage.commit(UnitOfWork(state.saga_id, "holder", failed_attempts=[attempt]), LEASE)
    history = await storage.get_history(state.saga_id)
    assert history[-1].error == "ValueError: nul \\x00 and lone \\ud800 here"


async def test_a_fenced_out_commit_writes_no_audit_row(storage: SagaStorage) -> None:
    """The stale executor's transition and failed attempts are refused with its state change;
    the lease holder's, committed concurrently, are recorded."""
    state = new_state()
    await storage.create(state, LEASE)
    attempt = AuditEntry("attempt_failed", {"step": "a", "attempt": 1, "error": "stale"}, 1.0)
    stale = storage.commit(UnitOfWork(state.saga_id, "stale", status=SagaStatus.COMPENSATING,
                                      error="stale", failed_attempts=[attempt]), LEASE)
    holder = storage.commit(UnitOfWork(state.saga_id, "holder", status=SagaStatus.COMPLETED,
                                       release_lease=True), LEASE)
    outcomes = await asyncio.gather(stale, holder, return_exceptions=True)
    assert isinstance(outcomes[0], LeaseLostError) and outcomes[1] is None
    assert [e.event for e in await storage.get_history(state.saga_id)] == ["saga_completed"]


@pytest.mark.parametrize("storage", ["sqlite", "postgresql"], indirect=True)
async def test_a_refused_unit_of_work_leaves_no_audit_row(storage: SagaStorage) -> None:
    """The audit rows are in the transaction of their transition: a unit the database refuses
    (two outbox events with one id) writes neither its state nor its history."""
    state = new_state()
    await storage.create(state, LEASE)
    twice = OutboxEvent("Charged", {}, saga_id=state.saga_id)
    attempt = AuditEntry("attempt_failed", {"step": "a", "attempt": 1, "error": "x"}, 1.0)
    with pytest.raises(StorageError):
        await storage.commit(UnitOfWork(state.saga_id, "holder", status=SagaStatus.COMPENSATING,
                                        failed_attempts=[attempt], events=[twice, twice]), LEASE)
    stored = await storage.load(state.saga_id)
    assert stored is not None and stored.status is SagaStatus.RUNNING
    assert await storage.get_history(state.saga_id) == []


async def test_sqlite_migrates_an_existing_file_to_the_audit_log(tmp_path: Path) -> None:
    """A file created before the audit log existed gets the table on its next open, and its
    earlier sagas simply have no history."""
    db = tmp_path / "old.db"
    first = SQLiteSagaStorage(db)
    state = new_state()
    await first.create(state, LEASE)
    await first.close()
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE saga_audit_log")
    conn.execute("DELETE FROM sagaz_migrations WHERE version = 4")  # only the audit log's
    conn.commit()
    conn.close()
    reopened = SQLiteSagaStorage(db)
    try:
        assert await reopened.get_history(state.saga_id) == []
        await reopened.commit(UnitOfWork(state.saga_id, "holder", status=SagaStatus.COMPLETED,
                                         release_lease=True), LEASE)
        assert [e.event for e in await reopened.get_history(state.saga_id)] == ["saga_completed"]
    finally:
        await reopened.close()


async def test_postgresql_audit_rows_land_in_the_current_partition(pg_dsn: str) -> None:
    storage = PostgreSQLSagaStorage(pg_dsn)
    try:
        result = await order_saga(storage).execute({})
    finally:
        await storage.close()
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT tableoid::regclass::text FROM saga_audit_log "
                            "WHERE saga_id = %s", (result.saga_id,)).fetchall()
    assert len(rows) == 7
    assert "saga_audit_log_default" not in {r[0] for r in rows}


async def test_postgresql_batch_sent_again_after_a_lost_commit_adds_no_audit_row(
    pg_dsn: str,
) -> None:
    """After a connection failure the outcome of a COMMIT is unknown and the batch is sent again
    (see storage/postgresql/batch.py): the audit rows that did commit are not added twice."""
    storage = PostgreSQLSagaStorage(pg_dsn)
    state = new_state()
    try:
        await storage.create(state, LEASE)
    finally:
        await storage.close()
    attempt = failed_attempt("a", 1, ConnectionError("down"), 1_000.0)
    work = UnitOfWork(state.saga_id, "holder", status=SagaStatus.COMPENSATING, error="E: down",
                      failed_attempts=[attempt])
    batch = [Pending("commit", work, LEASE)]
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        for sent in (False, True):  # the first send, then the one after the lost outcome
            outcomes = await _write_batch(conn, 0, batch=batch, created={}, sent=[sent])
            assert outcomes == [None]
    storage = PostgreSQLSagaStorage(pg_dsn)
    try:
        history = await storage.get_history(state.saga_id)
    finally:
        await storage.close()
    assert [e.event for e in history] == ["attempt_failed", "saga_compensating"]
    assert history[0].at == pytest.approx(1_000.0)
