"""Two versions of one saga, shared by the contract tests and the child process they kill.

v1: reserve -> charge -> ship. v2: reserve -> charge_card -> notify (charge renamed, notify
added, ship removed). Both use ``recovery="resume"``: a recovered saga runs its remaining steps
forward, so which definition finished it shows in the effects it left.

Every action and compensation appends ``<saga id> action <step>`` (or ``compensate``) to the
effects file named in the context, fsynced: the file survives SIGKILL. A saga whose context says
``pause_at: "<when>-action:<step>"`` (``when`` before: no effect yet, after: effect but no
commit) writes ``<saga id> <point>`` to the marker file and then waits forever, without blocking
the other sagas of its process, until the process is killed; only while pausing is on (the
context survives the crash, the pause must not: recovery runs with it off).
"""

from __future__ import annotations

import asyncio
from typing import Any

from effects_file import append_line

from sagaz import Saga, SagaContext
from sagaz.engine import definition

V1_STEPS = ("reserve", "charge", "ship")
V2_STEPS = ("reserve", "charge_card", "notify")


_pausing = {"on": False}


def set_pausing(on: bool) -> None:
    _pausing["on"] = on


async def _pause_if(ctx: SagaContext, point: str) -> None:
    if _pausing["on"] and ctx.get("pause_at") == point:
        append_line(ctx["marker"], f"{ctx.saga_id} {point}")
        await asyncio.Event().wait()  # until the process dies (or, in process, is cancelled)


def _action(step: str) -> Any:
    async def run(ctx: SagaContext) -> dict[str, Any]:
        await _pause_if(ctx, f"before-action:{step}")
        append_line(ctx["effects"], f"{ctx.saga_id} action {step}")
        await _pause_if(ctx, f"after-action:{step}")
        return {f"{step}_done": True}

    return run


def _compensation(step: str) -> Any:
    async def run(ctx: SagaContext) -> None:
        append_line(ctx["effects"], f"{ctx.saga_id} compensate {step}")

    return run


def build(name: str, version: str, steps: tuple[str, ...], **options: Any) -> Saga:
    saga = Saga(name=name, version=version, **{"recovery": "resume", **options})
    for step in steps:
        saga.add_step(step, _action(step), _compensation(step))
    return saga


def v1(name: str) -> Saga:
    return build(name, "1", V1_STEPS)


def v2(name: str, **options: Any) -> Saga:
    return build(name, "2", V2_STEPS, **options)


def forget(name: str) -> None:
    """Unregister every definition named ``name`` in this process: what a restart with new code
    does. (Only the in-memory storage runs its "dead" executor in the test process.)"""
    definition._registry.pop(name, None)
    definition._versions.pop(name, None)
    definition._classes.pop(name, None)
