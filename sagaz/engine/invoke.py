"""Calling a step's action or compensation: in a thread for plain functions, under the step
timeout, and checking what it returned can be merged into the persisted context."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from typing import Any

from sagaz.engine.context import SagaContext
from sagaz.errors import StepTimeoutError
from sagaz.values import UnstorableValueError, check_json

__all__ = ["BadResult", "call_step", "changes_of"]


class BadResult(TypeError):
    """An action returned something that cannot be merged into the persisted context."""


def changes_of(
    name: str, step_ctx: SagaContext, base: dict[str, Any], returned: Any
) -> dict[str, Any]:
    changes = step_ctx.changes_from(base)
    if returned is not None:
        if not isinstance(returned, dict):
            raise BadResult(
                f"step {name!r} returned {type(returned).__name__}; return a dict (merged into "
                "the context) or None")
        changes.update(returned)
    if changes:
        try:
            check_json(changes, "context")
        except UnstorableValueError as exc:
            raise BadResult(
                f"step {name!r} produced a result that cannot be stored: {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise BadResult(
                f"step {name!r} produced a context update that is not JSON-serialisable "
                f"({exc}); the context is persisted, so use plain JSON values") from exc
    return changes


async def call_step(
    fn: Callable[..., Any], is_async: bool, ctx: SagaContext, step_timeout: float | None,
    step: str, drain: Callable[[], bool],
) -> Any:
    """Call an action or compensation, applying the step timeout."""
    if step_timeout is None:
        return await (fn(ctx) if is_async else _in_thread(fn, ctx, drain))
    try:
        async with asyncio.timeout(step_timeout):
            # On timeout a thread cannot be interrupted: the step counts as failed, but the
            # function keeps running in its thread until it returns.
            return await (fn(ctx) if is_async else _in_thread(fn, ctx, drain))
    except TimeoutError as exc:
        raise StepTimeoutError(step, step_timeout) from exc


async def _in_thread(fn: Callable[..., Any], ctx: SagaContext, drain: Callable[[], bool]) -> Any:
    """Run a plain function in a thread. If the saga cancels the step (failure strategy, saga
    timeout) while the thread runs, wait for the thread: it cannot be stopped, so its outcome
    must be known, and a step that did complete must be recorded so it gets compensated."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(None, functools.partial(contextvars.copy_context().run, fn, ctx))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if not drain():
            raise
        task = asyncio.current_task()
        assert task is not None
        task.uncancel()
        return await future
