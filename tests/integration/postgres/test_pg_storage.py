"""The PostgreSQL storage against real PostgreSQL: engine semantics, fencing, read-only, faults."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from sagaz import LeaseLostError, Saga, SagaConfig, SagaStatus, StepStatus, StorageError
from sagaz.engine.types import SagaState
from sagaz.storage.base import UnitOfWork
from sagaz.storage.postgresql.storage import PostgreSQLSagaStorage, redact_dsn


@pytest.fixture
async def pg(pg_dsn: str) -> AsyncIterator[PostgreSQLSagaStorage]:
    storage = PostgreSQLSagaStorage(pg_dsn)
    yield storage
    await storage.close()


def _saga(config: SagaConfig, log: list[str], fail_at: str | None = None) -> Saga:
    def act(name: str) -> Any:
        async def fn(ctx: Any) -> dict[str, Any]:
            if name == fail_at:
                raise RuntimeError(f"{name} broke")
            log.append(name)
            return {name: ctx.attempt}
        return fn

    def undo(name: str) -> Any:
        async def fn(ctx: Any) -> None:
            log.append(f"undo-{name}")
        return fn

    saga = Saga(name="pg-order", config=config)
    for name in ("reserve", "charge", "ship"):
        saga.add_step(name, act(name), undo(name))
    return saga


async def test_a_saga_runs_and_every_state_is_in_postgresql(
    pg: PostgreSQLSagaStorage, pg_dsn: str
) -> None:
    log: list[str] = []
    result = await _saga(SagaConfig(storage=pg), log).execute({"order": "A1"})
    assert result.status is SagaStatus.COMPLETED
    stored = await pg.load(result.saga_id)
    assert stored is not None
    assert stored.status is SagaStatus.COMPLETED and stored.lease_owner is None
    assert stored.context == {"order": "A1", "reserve": 1, "charge": 1, "ship": 1}
    assert {n: s.status for n, s in stored.steps.items()} == dict.fromkeys(
        ("reserve", "charge", "ship"), StepStatus.COMPLETED)
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT status, context->>'order', tableoid::regclass::text "
                           "FROM saga_executions WHERE saga_id = %s", (result.saga_id,)).fetchone()
    assert row is not None and row[0] == "COMPLETED" and row[1] == "A1"
    assert row[2] != "saga_executions_default"  # landed in the current month's partition


async def test_failure_compensates_through_postgresql(pg: PostgreSQLSagaStorage) -> None:
    log: list[str] = []
    result = await _saga(SagaConfig(storage=pg), log, fail_at="ship").execute({})
    assert result.status is SagaStatus.COMPENSATED
    assert log == ["reserve", "charge", "undo-charge", "undo-reserve"]
    stored = await pg.load(result.saga_id)
    assert stored is not None and stored.failed_step == "ship"
    assert stored.steps["ship"].status is StepStatus.FAILED
    assert stored.steps["reserve"].status is StepStatus.COMPENSATED


async def test_concurrent_sagas_share_transactions(pg: PostgreSQLSagaStorage) -> None:
    log: list[str] = []
    saga = _saga(SagaConfig(storage=pg), log)
    results = await asyncio.gather(*(saga.execute({"i": i}) for i in range(200)))
    assert all(r.status is SagaStatus.COMPLETED for r in results)
    counts = await pg.count_by_status()
    assert counts == {SagaStatus.COMPLETED: 200}


async def test_idempotent_create_and_concurrent_starts(pg: PostgreSQLSagaStorage) -> None:
    log: list[str] = []
    saga = _saga(SagaConfig(storage=pg), log)
    outcomes = await asyncio.gather(*(saga.run({}, idempotency_key="k-1") for _ in range(5)))
    assert all(o == outcomes[0] for o in outcomes)
    assert log == ["reserve", "charge", "ship"]
    state = SagaState(str(uuid.uuid4()), "x", SagaStatus.RUNNING, {}, lease_owner="me")
    first, second = await asyncio.gather(pg.create(state, 30), pg.create(state, 30))
    assert sorted([first[1], second[1]]) == [False, True]


async def test_commits_are_fenced_by_the_lease(pg: PostgreSQLSagaStorage) -> None:
    state = SagaState(str(uuid.uuid4()), "x", SagaStatus.RUNNING, {}, lease_owner="owner-a")
    await pg.create(state, 30)
    with pytest.raises(LeaseLostError):
        await pg.commit(UnitOfWork(state.saga_id, "owner-b", status=SagaStatus.COMPLETED), 30)
    await pg.commit(UnitOfWork(state.saga_id, "owner-a", context={"ok": True}), 30)
    stored = await pg.load(state.saga_id)
    assert stored is not None and stored.context == {"ok": True}


async def test_claim_takes_only_expired_unfinished_sagas(pg: PostgreSQLSagaStorage) -> None:
    expired = SagaState(str(uuid.uuid4()), "x", SagaStatus.RUNNING, {}, lease_owner="dead")
    alive = SagaState(str(uuid.uuid4()), "x", SagaStatus.RUNNING, {}, lease_owner="alive")
    await pg.create(expired, 0.001)
    await pg.create(alive, 60)
    await asyncio.sleep(0.05)
    claims = await asyncio.gather(pg.claim_expired("r1", 30, 10), pg.claim_expired("r2", 30, 10))
    assert sorted(claims[0] + claims[1]) == [expired.saga_id]


async def test_readonly_storage_refuses_writes_but_reads(
    pg: PostgreSQLSagaStorage, pg_dsn: str
) -> None:
    log: list[str] = []
    result = await _saga(SagaConfig(storage=pg), log).execute({})
    reader = PostgreSQLSagaStorage(pg_dsn, readonly=True)
    try:
        state = SagaState(str(uuid.uuid4()), "x", SagaStatus.RUNNING, {}, lease_owner="me")
        with pytest.raises(StorageError, match="read-only"):
            await reader.create(state, 30)
        loaded = await reader.load(result.saga_id)
        assert loaded is not None and loaded.status is SagaStatus.COMPLETED
        assert [s.saga_id for s in await reader.list_sagas()] == [result.saga_id]
        config = SagaConfig(storage=pg, analytics_storage=reader)
        assert config.read_storage is reader
    finally:
        await reader.close()


async def test_a_killed_backend_is_survived(pg: PostgreSQLSagaStorage, pg_dsn: str) -> None:
    """pg_terminate_backend on the storage's connections mid-saga: the saga still completes."""
    log: list[str] = []
    gate = asyncio.Event()

    async def wait_for_kill(ctx: Any) -> None:
        await gate.wait()

    saga = _saga(SagaConfig(storage=pg), log)
    saga.add_step("after-kill", wait_for_kill)
    task = asyncio.create_task(saga.execute({}))
    await asyncio.sleep(0.2)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()
    assert killed is not None and killed[0] >= 1
    gate.set()
    result = await asyncio.wait_for(task, 30)
    assert result.status is SagaStatus.COMPLETED
    assert log == ["reserve", "charge", "ship"]


def test_dsn_passwords_are_redacted() -> None:
    assert "s3cret" not in redact_dsn("postgresql://app:s3cret@db:6432/sagaz")
    assert "s3cret" not in repr(PostgreSQLSagaStorage("postgresql://app:s3cret@db/sagaz"))


async def test_a_fenced_out_writer_in_the_same_batch_changes_nothing(
    pg: PostgreSQLSagaStorage,
) -> None:
    """Writes of two owners to one saga never merge into one update: the lease holder's commit
    applies, the stale executor's is refused, whatever their order."""
    for first in ("stale", "holder"):
        state = SagaState(str(uuid.uuid4()), "x", SagaStatus.RUNNING, {}, lease_owner="holder")
        await pg.create(state, 30)
        stale = pg.commit(UnitOfWork(state.saga_id, "stale", context={"by": "stale"}), 30)
        holder = pg.commit(UnitOfWork(state.saga_id, "holder", context={"by": "holder"}), 30)
        pair = (stale, holder) if first == "stale" else (holder, stale)
        outcomes = await asyncio.gather(*pair, return_exceptions=True)
        by_owner = dict(zip((first, "holder" if first == "stale" else "stale"), outcomes,
                            strict=True))
        assert by_owner["holder"] is None
        assert isinstance(by_owner["stale"], LeaseLostError)
        stored = await pg.load(state.saga_id)
        assert stored is not None and stored.context == {"by": "holder"}


async def test_a_write_postgresql_cannot_store_fails_alone(pg: PostgreSQLSagaStorage) -> None:
    states = [SagaState(str(uuid.uuid4()), "x", SagaStatus.RUNNING, {}, lease_owner="me")
              for _ in range(4)]
    await asyncio.gather(*(pg.create(s, 30) for s in states))
    contexts = [{"ok": i} for i in range(3)] + [{"bad": "nul \u0000 byte"}]
    outcomes = await asyncio.gather(
        *(pg.commit(UnitOfWork(s.saga_id, "me", context=c), 30)
          for s, c in zip(states, contexts, strict=True)), return_exceptions=True)
    assert outcomes[:3] == [None, None, None]
    assert isinstance(outcomes[3], StorageError)
