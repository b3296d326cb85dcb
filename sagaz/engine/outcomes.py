"""Where a saga's outcome comes from when this coroutine is not the one running it: the runs of
this process (by saga id), or the storage; and the exception a failed outcome raises."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from sagaz.engine.types import SagaResult, SagaStatus
from sagaz.errors import SagaFailedError, SagaNotFoundError

if TYPE_CHECKING:
    from sagaz.engine.definition import Saga
    from sagaz.storage.base import SagaStorage

__all__ = ["failure_error", "local_runs", "poll_outcome"]

# Runs of this process by saga id, so a concurrent start of the same saga in this process gets the
# full outcome (with the original exception) instead of polling the storage.
local_runs: dict[str, asyncio.Future[SagaResult]] = {}


async def poll_outcome(saga: Saga, storage: SagaStorage, saga_id: str) -> SagaResult:
    """Wait for a saga run by someone else (another process, or recovery) to end."""
    delay = 0.005
    while True:
        state = await storage.load(saga_id)
        if state is None:
            raise SagaNotFoundError(saga_id)
        if state.status.is_final:
            return SagaResult.from_state(state, list(saga.graph.order))
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def failure_error(result: SagaResult) -> SagaFailedError:
    """The exception :meth:`Saga.run` raises for a saga that did not complete."""
    what = "compensated" if result.status is SagaStatus.COMPENSATED else "failed"
    where = f" at step {result.failed_step!r}" if result.failed_step else ""
    message = f"saga {result.saga_name!r} ({result.saga_id}) {what}{where}"
    if result.error_message:
        message += f": {result.error_message}"
    if result.compensation_errors:
        message += f"; compensation failed for {sorted(result.compensation_errors)}"
    err = SagaFailedError(
        message, saga_id=result.saga_id, saga_name=result.saga_name, status=result.status,
        failed_step=result.failed_step, compensation_errors=result.compensation_errors,
        error=result.error_message)
    err.__cause__ = result.error
    return err
