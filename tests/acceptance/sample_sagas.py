"""Sagas the CLI acceptance tests run. Imported by the CLI in a subprocess (PYTHONPATH points
here), so everything is at module level."""

from __future__ import annotations

import asyncio
import logging
import pathlib
from typing import Any

from sagaz import Saga, SagaContext, action, compensate


async def add_greeting(ctx: SagaContext) -> dict[str, Any]:
    return {"greeting": f"hello {ctx.get('name', 'world')}"}


async def count(ctx: SagaContext) -> dict[str, Any]:
    return {"count": int(ctx.get("count", 0)) + 1}


async def undo(ctx: SagaContext) -> None:
    return None


async def explode(ctx: SagaContext) -> None:
    raise RuntimeError("card declined")


hello = Saga(name="cli-hello").add_step("greet", add_greeting, undo).add_step("count", count)

failing = (
    Saga(name="cli-failing")
    .add_step("reserve", add_greeting, undo)
    .add_step("charge", explode, undo)
)

not_a_saga = {"just": "a dict"}


class ClassSaga(Saga):
    """A declarative saga given to the CLI as a class (instantiated with no arguments)."""

    saga_name = "cli-class"

    @action("first")
    async def first(self, ctx: SagaContext) -> dict[str, Any]:
        return {"first": True}

    @action("second")
    async def second(self, ctx: SagaContext) -> dict[str, Any]:
        return {"second": True}


class BlockingSaga(Saga):
    """Step one completes; step two writes ctx["marker"] and then never returns, so the test can
    SIGKILL the executor at a known point. Registered by name, so `sagaz worker --import
    sample_sagas` can recover it. Compensations are idempotent and leave a trace in files."""

    saga_name = "cli-blocking"

    @action("first")
    async def first(self, ctx: SagaContext) -> dict[str, Any]:
        return {"first_done": True}

    # Plain functions on purpose: the engine runs them in a worker thread.
    @compensate("first")
    def undo_first(self, ctx: SagaContext) -> None:
        pathlib.Path(ctx["marker"] + ".undo-first").touch()

    @action("second")
    async def second(self, ctx: SagaContext) -> None:
        # Step one is committed before step two starts: the marker tells the test it may kill.
        await asyncio.to_thread(pathlib.Path(ctx["marker"]).touch)
        await asyncio.sleep(1000)

    @compensate("second")
    def undo_second(self, ctx: SagaContext) -> None:
        pathlib.Path(ctx["marker"] + ".undo-second").touch()


_log = logging.getLogger("sample_sagas")


async def reserve_and_log(ctx: SagaContext) -> None:
    # An action's own log call, without any saga fields: JSON logs tag it with saga and step.
    _log.warning("reserving stock for %s", ctx.get("order", "?"),
                 extra={"action": "sample_reserve"})


async def undo_fails(ctx: SagaContext) -> None:
    raise RuntimeError("stock service down")


logged = (
    Saga(name="cli-logged")
    .add_step("reserve", reserve_and_log, undo_fails)
    .add_step("charge", explode, undo)
)
