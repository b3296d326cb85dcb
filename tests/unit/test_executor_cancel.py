"""A cancel request reaching a running execution: the running step finishes (the step boundary),
nothing new starts, and what completed is compensated."""

from __future__ import annotations

import asyncio
from typing import Any

import sagaz
from sagaz import Saga, SagaStatus, StepStatus
from sagaz.engine.executor import SagaExecution
from sagaz.engine.lease import process_owner
from sagaz.engine.types import SagaState
from sagaz.storage.memory import InMemorySagaStorage


async def test_cancel_stops_at_the_next_step_boundary_and_compensates(
    storage: InMemorySagaStorage,
) -> None:
    log: list[str] = []
    inside_b = asyncio.Event()
    release_b = asyncio.Event()

    async def step_a(ctx: Any) -> None:
        log.append("a")

    async def step_b(ctx: Any) -> None:
        inside_b.set()
        await release_b.wait()
        log.append("b")

    async def step_c(ctx: Any) -> None:
        log.append("c")

    def undo(name: str) -> Any:
        async def fn(ctx: Any) -> None:
            log.append(f"undo-{name}")
        return fn

    saga = (Saga(name="cancellable").add_step("a", step_a, undo("a"))
            .add_step("b", step_b, undo("b")).add_step("c", step_c, undo("c")))
    config = sagaz.get_config()
    owner = process_owner()
    state, _ = await storage.create(
        SagaState("7f1c2a4e-0000-4000-8000-000000000001", saga.name, SagaStatus.RUNNING, {},
                  lease_owner=owner), config.lease_seconds)
    execution = SagaExecution(saga, config, state, owner)
    running = asyncio.create_task(execution.drive())
    await inside_b.wait()
    execution.request_cancel("customer asked")
    release_b.set()
    result = await running
    assert result.status is SagaStatus.COMPENSATED
    assert log == ["a", "b", "undo-b", "undo-a"]
    assert result.error_message == "cancelled: customer asked"
    assert result.failed_step is None
    stored = await storage.load(state.saga_id)
    assert stored is not None and stored.status is SagaStatus.COMPENSATED
    assert stored.step_status("c") is StepStatus.PENDING
