"""``sagaz.Worker`` as a library, on a real SQLite file: start() recovers an orphaned saga and
relays the outbox, stop() drains and closes; run_once() says what it left unfinished; what runs
follows what the storage declares (its capability protocols)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import sagaz
from sagaz import Saga, SagaConfig, SagaStatus
from sagaz.engine.types import SagaState
from sagaz.outbox.brokers.memory import InMemoryBroker
from sagaz.storage.memory import InMemorySagaStorage
from sagaz.storage.sqlite import SQLiteSagaStorage


class Recorder(sagaz.WorkerListener):
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.passes = 0

    def started(self, worker: sagaz.Worker) -> None:
        self.calls.append("started")

    def recovery_pass(self, report: sagaz.RecoveryReport) -> None:
        self.passes += 1

    def stopping(self) -> None:
        self.calls.append("stopping")

    def stopped(self) -> None:
        self.calls.append("stopped")


def _shop(config: SagaConfig, name: str = "worker-lib-shop") -> Saga:
    async def reserve(ctx: Any) -> None:
        ctx.emit("Reserved", {"order": ctx["order"]}, key=ctx["order"])

    async def release(ctx: Any) -> None:
        return None

    return Saga(name=name, config=config).add_step("reserve", reserve, release)


async def _orphan(
    storage: SQLiteSagaStorage, saga_id: str, name: str = "worker-lib-shop"
) -> None:
    """A RUNNING saga whose executor died: its lease expires at once."""
    state = SagaState(saga_id, name, SagaStatus.RUNNING, {"order": "O9"},
                      lease_owner="dead-process")
    await storage.create(state, 0.01)


async def test_start_recovers_and_relays_then_stop_drains(tmp_path: Path) -> None:
    broker = InMemoryBroker()
    storage = SQLiteSagaStorage(tmp_path / "sagaz.db")
    config = SagaConfig(storage=storage, broker=broker, lease_seconds=5)
    shop = _shop(config)
    await shop.run({"order": "A1"})
    orphan = "6f2d1f1e-2b1c-4d5e-8f90-0a1b2c3d4e5f"
    await _orphan(storage, orphan)
    recorder = Recorder()
    worker = sagaz.Worker(config, sagas=[shop], interval=0.05, listeners=[recorder])
    try:
        async with worker:
            assert worker.relay is not None and worker.retention is not None
            assert worker.maintenance is None  # SQLite declares no maintenance
            for _ in range(200):
                state = await storage.load(orphan)
                assert state is not None
                if state.status.is_final and worker.relay.relayed >= 3:
                    break
                await asyncio.sleep(0.05)
            assert worker.alive() == (True, "ok")
            assert state.status is SagaStatus.COMPENSATED
            # Reserved + SagaCompleted of the run, SagaCompensated of the recovered saga.
            assert worker.relay.relayed >= 3
        assert recorder.calls == ["started", "stopping", "stopped"]
        assert recorder.passes >= 1
        assert worker.alive()[0] is False
        types = sorted(e.event_type for e in broker._log)
        assert types == ["Reserved", "SagaCompensated", "SagaCompleted"]
    finally:
        await storage.close()


async def test_run_once_reports_what_it_could_not_finish(tmp_path: Path) -> None:
    storage = SQLiteSagaStorage(tmp_path / "sagaz.db")
    # A short lease: the pass that finds no definition claims the saga for that long.
    config = SagaConfig(storage=storage, lease_seconds=0.05)
    try:
        # Never registered: a definition passed to the worker only, not built before.
        await _orphan(storage, "0b7c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3", "worker-lib-unknown")
        await asyncio.sleep(0.05)
        report = await sagaz.Worker(config).run_once()
        assert not report.ok
        assert list(report.recovery.unknown_definitions.values()) == ["worker-lib-unknown"]
        await asyncio.sleep(0.1)  # the failed pass claimed it: its lease expires again
        ok = await sagaz.Worker(config, sagas=[_shop(config, "worker-lib-unknown")]).run_once()
        assert ok.ok and ok.recovery.count == 1 and ok.relay_failure is None
    finally:
        await storage.close()


def test_what_runs_follows_the_storage_capabilities() -> None:
    memory = sagaz.Worker(SagaConfig(storage=InMemorySagaStorage(), broker=InMemoryBroker()))
    memory.bind()
    # The memory storage keeps no outbox and no maintenance: only recovery runs.
    assert (memory.relay, memory.maintenance, memory.retention) == (None, None, None)
    with pytest.raises(sagaz.ConfigurationError, match="not PostgreSQL"):
        sagaz.Worker(SagaConfig(storage=InMemorySagaStorage()), maintenance_dsn="redis://h/0")
