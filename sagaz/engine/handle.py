"""Starting a saga without awaiting its end: :meth:`Saga.start` returns a :class:`SagaHandle` once
the saga is durably created; the saga runs on in the background of this process (and, if this
process dies, recovery or any worker finishes it)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from sagaz.engine.outcomes import failure_error
from sagaz.engine.starting import await_outcome, start_saga
from sagaz.engine.types import SagaResult, SagaStatus
from sagaz.errors import SagaNotFoundError

if TYPE_CHECKING:
    from sagaz.config import SagaConfig
    from sagaz.engine.definition import Saga

__all__ = ["SagaHandle", "start"]

logger = logging.getLogger(__name__)

# Background runs started by handles: referenced here so they are not garbage-collected.
_running: set[asyncio.Task[SagaResult]] = set()


class SagaHandle:
    """A started saga: ``saga_id``, its stored ``status()``, and ``result()`` (the final
    context, or :class:`~sagaz.errors.SagaFailedError`, as :meth:`Saga.run` would return)."""

    def __init__(self, saga: Saga, config: SagaConfig, saga_id: str,
                 task: asyncio.Task[SagaResult]):
        self.saga_id = saga_id
        self.config = config
        self._saga = saga
        self._config = config
        self._task = task

    def __repr__(self) -> str:
        return f"<SagaHandle {self._saga.name!r} {self.saga_id}>"

    async def status(self) -> SagaStatus:
        """The saga's stored status now (WAITING while it is parked)."""
        state = await self._config.write_storage.load(self.saga_id)
        if state is None:
            raise SagaNotFoundError(self.saga_id)
        return state.status

    async def outcome(self) -> SagaResult:
        """The final :class:`SagaResult` (awaits through waits), like :meth:`Saga.execute`."""
        if not self._task.cancelled():
            try:
                return await asyncio.shield(self._task)
            except asyncio.CancelledError:
                if not self._task.cancelled():
                    raise
        return await await_outcome(self._saga, self._config, self.saga_id)

    async def result(self) -> dict[str, Any]:
        """The final context; raises :class:`~sagaz.errors.SagaFailedError` if the saga did not
        complete."""
        result = await self.outcome()
        if result.status is SagaStatus.COMPLETED:
            return result.context
        raise failure_error(result)


async def start(
    saga: Saga, context: dict[str, Any] | None, *, saga_id: str | None = None,
    idempotency_key: str | None = None,
) -> SagaHandle:
    from sagaz.config import get_config

    config = saga.config or get_config()
    started = await start_saga(saga, context, saga_id=saga_id, idempotency_key=idempotency_key)
    if isinstance(started, str):
        sid = started
        task = asyncio.get_running_loop().create_task(await_outcome(saga, config, sid))
    else:
        sid = started.state.saga_id
        task = asyncio.get_running_loop().create_task(_run_started(saga, config, started))
    _running.add(task)
    task.add_done_callback(_forget)
    return SagaHandle(saga, config, sid, task)


async def _run_started(saga: Saga, config: SagaConfig, execution: Any) -> SagaResult:
    result: SagaResult = await execution.drive()
    if result.status is SagaStatus.WAITING:
        return await await_outcome(saga, config, result.saga_id)
    return result


def _forget(task: asyncio.Task[SagaResult]) -> None:
    _running.discard(task)
    if not task.cancelled() and task.exception() is not None:
        # Retrieved here so an unawaited handle does not warn; result() re-raises it.
        logger.warning("background saga run failed: %s", task.exception(),
                       extra={"action": "saga_background_failed"})
