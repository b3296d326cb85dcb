"""One contract for durable waits, signals and timers: the same test bodies against the in-memory
storage, a real SQLite file and a real PostgreSQL database. Time is a ManualClock: the tests
advance it instead of sleeping."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import sagaz
from sagaz import Saga, SagaConfig, SagaFailedError, SagaStatus, StepStatus
from sagaz.engine.waits import resume_due
from sagaz.errors import SagaDefinitionError, SagaNotFoundError, SignalRefusedError
from sagaz.storage.base import SagaStorage
from sagaz.storage.memory import InMemorySagaStorage
from sagaz.storage.postgresql import PostgreSQLSagaStorage
from sagaz.storage.sql import migrations
from sagaz.storage.sqlite import SQLiteSagaStorage
from sagaz.testing import ManualClock

KINDS = ("memory", "sqlite", "postgresql")


@pytest.fixture(params=KINDS)
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SagaStorage]:
    kind: str = request.param
    if kind == "memory":
        store: SagaStorage = InMemorySagaStorage()
    elif kind == "sqlite":
        store = SQLiteSagaStorage(tmp_path / "waits.db")
    else:
        store = PostgreSQLSagaStorage(request.getfixturevalue("pg_dsn"), retry_timeout=5)
    yield store
    await store.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def config(storage: SagaStorage, clock: ManualClock) -> SagaConfig:
    return SagaConfig(storage=storage, clock=clock, lease_seconds=5)


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def step(self, name: str, result: dict[str, Any] | None = None) -> Any:
        async def fn(ctx: Any) -> dict[str, Any] | None:
            self.lines.append(name)
            return result
        return fn

    def undo(self, name: str) -> Any:
        async def fn(ctx: Any) -> None:
            self.lines.append(f"undo-{name}")
        return fn


def approval_saga(log: Log, config: SagaConfig, name: str = "order",
                  on_timeout: str | dict[str, Any] = "compensate") -> Saga:
    saga = Saga(name=name, config=config)
    saga.add_step("reserve", log.step("reserve", {"reserved": True}), log.undo("reserve"))
    saga.add_wait("approval", signal="OrderApproved", timeout=3600, on_timeout=on_timeout)
    saga.add_step("ship", log.step("ship"), log.undo("ship"))
    return saga


async def until_status(storage: SagaStorage, saga_id: str, status: SagaStatus,
                       step: str | None = None) -> None:
    """Until the stored saga has ``status`` (and ``step`` completed), bounded: the engine
    needs a few commits."""
    for _ in range(1000):
        state = await storage.load(saga_id)
        if state is not None and state.status is status and (
                step is None or state.step_status(step) is StepStatus.COMPLETED):
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"saga {saga_id} never became {status}")


async def test_a_signal_resumes_a_parked_saga_and_merges_its_payload(
    storage: SagaStorage, config: SagaConfig,
) -> None:
    log = Log()
    handle = await approval_saga(log, config).start({"order": 7})
    await until_status(storage, handle.saga_id, SagaStatus.WAITING)
    assert await handle.status() is SagaStatus.WAITING
    parked = await storage.load(handle.saga_id)
    assert parked is not None and parked.lease_owner is None  # no process holds it
    assert parked.step_status("approval") is StepStatus.PENDING
    assert await sagaz.signal(handle.saga_id, "OrderApproved", {"approved_by": "ana"},
                              config=config)
    assert await handle.result() == {"order": 7, "reserved": True, "approved_by": "ana"}
    assert log.lines == ["reserve", "ship"]
    done = await storage.load(handle.saga_id)
    assert done is not None and done.status is SagaStatus.COMPLETED
    assert done.step_status("approval") is StepStatus.COMPLETED
    assert done.steps["approval"].result == {"approved_by": "ana"}


async def test_a_signal_sent_before_the_wait_is_kept_and_consumed_there(
    storage: SagaStorage, config: SagaConfig,
) -> None:
    log = Log()
    saga = Saga(name="early", config=config)
    signalled = asyncio.Event()

    async def reserve(ctx: Any) -> None:
        # The signal arrives while the saga is still on its way to the wait.
        assert await sagaz.signal(ctx.saga_id, "OrderApproved", {"early": True}, config=config)
        signalled.set()

    saga.add_step("reserve", reserve)
    saga.add_wait("approval", signal="OrderApproved", timeout=60)
    saga.add_step("ship", log.step("ship"))
    assert await saga.run({}) == {"early": True}
    assert signalled.is_set() and log.lines == ["ship"]


async def test_on_timeout_the_wait_fails_and_the_saga_compensates(
    storage: SagaStorage, config: SagaConfig, clock: ManualClock,
) -> None:
    log = Log()
    handle = await approval_saga(log, config).start({})
    await until_status(storage, handle.saga_id, SagaStatus.WAITING)
    parked = await storage.load(handle.saga_id)
    assert parked is not None and parked.wake_at == pytest.approx(clock.now() + 3600)
    clock.advance(3599)
    assert await handle.status() is SagaStatus.WAITING
    clock.advance(1)
    with pytest.raises(SagaFailedError) as failed:
        await handle.result()
    assert failed.value.status is SagaStatus.COMPENSATED
    assert failed.value.failed_step == "approval"
    assert "OrderApproved" in str(failed.value)
    assert log.lines == ["reserve", "undo-reserve"]


async def test_on_timeout_a_dict_continues_the_saga_with_it(
    storage: SagaStorage, config: SagaConfig, clock: ManualClock,
) -> None:
    log = Log()
    saga = approval_saga(log, config, name="lenient", on_timeout={"approved": False})
    run = asyncio.ensure_future(saga.run({}))
    await until_status_of_name(storage, "lenient", SagaStatus.WAITING)
    clock.advance(3600)
    assert await run == {"reserved": True, "approved": False}
    assert log.lines == ["reserve", "ship"]


async def until_status_of_name(storage: SagaStorage, name: str, status: SagaStatus) -> str:
    for _ in range(1000):
        found = [s for s in await storage.list_sagas(status) if s.saga_name == name]
        if found:
            return found[0].saga_id
        await asyncio.sleep(0.005)
    raise AssertionError(f"no {name} saga became {status}")


async def test_a_durable_delay_goes_on_after_its_seconds(
    storage: SagaStorage, config: SagaConfig, clock: ManualClock,
) -> None:
    log = Log()
    saga = (Saga(name="cool-off", config=config).add_step("a", log.step("a"))
            .add_delay("cool_off", seconds=30).add_step("b", log.step("b")))
    run = asyncio.ensure_future(saga.execute({}))
    sid = await until_status_of_name(storage, "cool-off", SagaStatus.WAITING)
    assert log.lines == ["a"]
    clock.advance(29.5)
    await asyncio.sleep(0.02)
    assert (await storage.load(sid)).status is SagaStatus.WAITING  # type: ignore[union-attr]
    clock.advance(0.5)
    result = await run
    assert result.status is SagaStatus.COMPLETED and log.lines == ["a", "b"]


async def test_duplicate_signal_ids_are_idempotent(
    storage: SagaStorage, config: SagaConfig, clock: ManualClock,
) -> None:
    log = Log()
    saga = Saga(name="twice", config=config)
    saga.add_wait("first", signal="Go", timeout=60)
    saga.add_wait("second", signal="Go", timeout=60)
    saga.add_step("end", log.step("end"))
    handle = await saga.start({})
    assert await sagaz.signal(handle.saga_id, "Go", {"n": 1}, signal_id="a", config=config)
    assert not await sagaz.signal(handle.saga_id, "Go", {"n": 2}, signal_id="a", config=config)
    await until_status(storage, handle.saga_id, SagaStatus.WAITING, step="first")
    state = await storage.load(handle.saga_id)
    # The duplicate was not kept: the second wait has nothing to take and waits for its timer.
    assert state is not None and state.signals == []
    assert state.wake_at == pytest.approx(clock.now() + 60), (
        state, await storage.get_history(handle.saga_id))
    assert state.step_status("second") is StepStatus.PENDING  # the duplicate did not count
    assert await sagaz.signal(handle.saga_id, "Go", {"n": 3}, signal_id="b", config=config)
    assert await handle.result() == {"n": 3}


async def test_signals_to_unknown_or_finished_sagas_are_refused(
    storage: SagaStorage, config: SagaConfig,
) -> None:
    with pytest.raises(SagaNotFoundError):
        await sagaz.signal("1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed", "Go", config=config)
    saga = Saga(name="quick", config=config).add_step("a", Log().step("a"))
    handle = await saga.start({})
    await handle.result()
    with pytest.raises(SignalRefusedError, match="COMPLETED"):
        await sagaz.signal(handle.saga_id, "Go", {}, config=config)
    with pytest.raises(SagaDefinitionError, match="UUID"):
        await sagaz.signal("not-a-uuid", "Go", config=config)


async def test_any_worker_resumes_a_due_saga_once_and_leaves_the_others(
    storage: SagaStorage, config: SagaConfig, clock: ManualClock,
) -> None:
    """The process that parked the sagas is gone; two workers' resume passes race."""
    log = Log()
    saga = approval_saga(log, config, name="handover")
    sagaz.register(saga)
    runs = [asyncio.ensure_future(saga.run({"n": i})) for i in range(3)]
    waiting: list[str] = []
    for _ in range(1000):
        waiting = [s.saga_id for s in await storage.list_sagas(SagaStatus.WAITING)
                   if s.saga_name == "handover"]
        if len(waiting) == 3:
            break
        await asyncio.sleep(0.005)
    for run in runs:  # the awaiting callers die
        run.cancel()
    async with asyncio.timeout(30):  # bounded, so that a hang says where it is
        await asyncio.gather(*runs, return_exceptions=True)
    first, second, third = waiting
    await sagaz.signal(first, "OrderApproved", {"ok": 1}, config=config)
    await sagaz.signal(second, "OrderApproved", {"ok": 2}, config=config)
    async with asyncio.timeout(30):
        reports = await asyncio.gather(resume_due(config), resume_due(config))
    resumed = {sid: status for report in reports for sid, status in report.resumed.items()}
    assert resumed == {first: SagaStatus.COMPLETED, second: SagaStatus.COMPLETED}
    assert log.lines.count("ship") == 2
    assert (await storage.load(third)).status is SagaStatus.WAITING  # type: ignore[union-attr]
    assert (await resume_due(config)).count == 0  # nothing due: its timer is an hour away
    clock.advance(3600)
    async with asyncio.timeout(30):
        report = await resume_due(config)
    assert report.resumed == {third: SagaStatus.COMPENSATED}


async def test_declarative_wait_runs_its_hook_with_the_payload(
    storage: SagaStorage, config: SagaConfig,
) -> None:
    class Approval(Saga):
        saga_name = "declared-approval"

        @sagaz.action("reserve")
        async def reserve(self, ctx: Any) -> dict[str, Any]:
            return {"reserved": True}

        @sagaz.wait("approval", signal="Approved", timeout=600)
        async def approved(self, ctx: Any) -> dict[str, Any]:
            return {"approver": ctx["by"].upper()}

    handle = await Approval(config=config).start({})
    await until_status(storage, handle.saga_id, SagaStatus.WAITING)
    await sagaz.signal(handle.saga_id, "Approved", {"by": "ana"}, config=config)
    assert await handle.result() == {"reserved": True, "by": "ana", "approver": "ANA"}


async def test_a_crashed_resumer_leaves_the_saga_to_the_next_one(
    storage: SagaStorage, config: SagaConfig,
) -> None:
    """A worker that claimed a due saga and died before its commit: once its lease expires the
    saga is due again for the others."""
    log = Log()
    saga = approval_saga(log, config, name="crashed-resumer")
    sagaz.register(saga)
    run = asyncio.ensure_future(saga.run({}))
    sid = await until_status_of_name(storage, "crashed-resumer", SagaStatus.WAITING)
    run.cancel()  # the caller awaiting it is gone too
    await asyncio.gather(run, return_exceptions=True)
    await sagaz.signal(sid, "OrderApproved", {}, config=config)
    waits = storage
    now = config.clock.now()
    assert await waits.claim_due("dead-worker", 0.05, now, 10) == [sid]  # type: ignore[attr-defined]
    assert await waits.claim_due("other", 5, now, 10) == []  # type: ignore[attr-defined]
    for _ in range(200):
        report = await resume_due(config)
        if report.count:
            break
        await asyncio.sleep(0.01)  # the lease runs on real time, not the test clock
    assert report.resumed == {sid: SagaStatus.COMPLETED}
    assert log.lines == ["reserve", "ship"]


async def test_sqlite_upgrade_keeps_sagas_and_steps(tmp_path: Path) -> None:
    """Migration 0006 rebuilds saga_executions and saga_steps: a database written before it
    keeps its rows, their definition columns (0005) and the steps' tie to their saga."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE sagaz_migrations (version INTEGER PRIMARY KEY, "
                     "name TEXT NOT NULL, applied_at REAL NOT NULL)")
        for migration in migrations("sqlite")[:5]:
            conn.executescript(migration.sql)
            conn.execute("INSERT INTO sagaz_migrations VALUES (?, ?, 0)",
                         (migration.version, migration.name))
        conn.execute("INSERT INTO saga_executions (saga_id, saga_name, status, context, "
                     "created_at, updated_at, definition_version) "
                     "VALUES ('s1', 'old', 'COMPLETED', '{}', 1, 1, '2')")
        conn.execute("INSERT INTO saga_steps (saga_id, step_name, status) "
                     "VALUES ('s1', 'a', 'COMPLETED')")
    storage = SQLiteSagaStorage(path)
    try:
        state = await storage.load("s1")
        assert state is not None and state.status is SagaStatus.COMPLETED
        assert state.step_status("a") is StepStatus.COMPLETED
        assert state.definition_version == "2"
    finally:
        await storage.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        conn.execute("DELETE FROM saga_executions WHERE saga_id = 's1'")
        assert conn.execute("SELECT count(*) FROM saga_steps").fetchone() == (0,)


async def test_start_is_idempotent_and_returns_once_the_saga_is_stored(
    storage: SagaStorage, config: SagaConfig,
) -> None:
    log = Log()
    saga = approval_saga(log, config, name="started-twice")
    first = await saga.start({"n": 1}, idempotency_key="order-9")
    stored = await storage.load(first.saga_id)
    assert stored is not None and stored.saga_name == "started-twice"  # durably created
    again = await saga.start({"n": 2}, idempotency_key="order-9")
    assert again.saga_id == first.saga_id
    await until_status(storage, first.saga_id, SagaStatus.WAITING)
    await sagaz.signal(first.saga_id, "OrderApproved", {"ok": True}, config=config)
    assert await first.result() == await again.result() == {"n": 1, "reserved": True,
                                                             "ok": True}
    assert log.lines == ["reserve", "ship"]
    outcome = await again.outcome()
    assert outcome.status is SagaStatus.COMPLETED and outcome.saga_id == first.saga_id
