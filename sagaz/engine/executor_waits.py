"""The durable-wait commands of one execution (:class:`~sagaz.engine.executor.SagaExecution`):
record reached waits, end a wait with its signal or timeout, park the saga WAITING."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from sagaz.engine.context import SagaContext
from sagaz.engine.invoke import call_step, changes_of
from sagaz.engine.types import SagaState, SagaStatus, StepState, StepStatus
from sagaz.engine.wait_steps import no_hook
from sagaz.errors import WaitTimeoutError
from sagaz.storage.audit import AuditEntry, failed_attempt
from sagaz.storage.base import SagaStorage, UnitOfWork
from sagaz.values import storable_text

if TYPE_CHECKING:
    from sagaz.engine import plan
    from sagaz.engine.clock import Clock
    from sagaz.engine.definition import Saga
    from sagaz.engine.listeners import SagaListener
    from sagaz.outbox.event import OutboxEvent

__all__ = ["DurableWaits", "describe"]

logger = logging.getLogger(__name__)


def describe(exc: BaseException) -> str:
    """The error recorded for a step: storable whatever the exception says, so that recording
    a failure can never be what fails the saga's commit."""
    text = str(exc)
    return storable_text(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


class DurableWaits:
    """Mixed into the execution; these are the parts of it the wait commands use."""

    saga: Saga
    state: SagaState
    storage: SagaStorage
    owner: str
    lease_seconds: float
    clock: Clock
    ctx: dict[str, Any]
    listeners: list[SagaListener]
    _failed_attempts: list[AuditEntry]
    _reached: list[StepState]

    def _stop(self, name: str, status: StepStatus, exc: BaseException | None, attempts: int,
              started: float) -> None:
        raise NotImplementedError

    def _completing(self, work: UnitOfWork, events: list[OutboxEvent]) -> None:
        raise NotImplementedError

    def _take_failed_attempts(self) -> list[AuditEntry]:
        raise NotImplementedError

    def _notify(self, method: str, *args: Any) -> None:
        raise NotImplementedError

    @property
    def _plan(self) -> plan.SagaPlan:
        raise NotImplementedError

    def _reach(self, names: tuple[str, ...]) -> None:
        now = self.clock.now()
        for name in names:
            step = StepState(name, StepStatus.PENDING, started_at=now)
            self.state.steps[name] = step
            self._reached.append(step)

    async def _resolve_wait(self, command: plan.ResolveWait) -> None:
        """End a wait: with its signal's payload (and the hook's result), or its on_timeout."""
        name, signal = command.name, command.signal
        spec = self.saga.step_spec(name)
        reached = self.state.steps[name].started_at
        changes: dict[str, Any] = {}
        if signal is not None:
            changes.update(signal.payload)
            if spec.action is not no_hook:
                step_ctx = SagaContext({**self.ctx, **changes}, self.state.saga_id,
                                       self.saga.name, name, 1)
                try:
                    returned = await call_step(spec.action, spec.is_async, step_ctx,
                                               spec.timeout, name, lambda: False)
                    changes.update(changes_of(name, step_ctx, {**self.ctx, **changes}, returned))
                except Exception as exc:
                    self._failed_attempts.append(failed_attempt(name, 1, exc, time.time()))
                    self._stop(name, StepStatus.FAILED, exc, 1, reached or time.time())
                    return
        elif command.on_timeout is not None:
            changes.update(command.on_timeout)
        else:
            assert spec.wait is not None and spec.wait.timeout is not None
            self._stop(name, StepStatus.FAILED, WaitTimeoutError(name, spec.wait.signal,
                                                                 spec.wait.timeout),
                       0, reached or time.time())
            return
        if changes:
            self.ctx = {**self.ctx, **changes}
        step = StepState(name, StepStatus.COMPLETED, changes or None, None, 1, reached,
                         self.clock.now())
        work = UnitOfWork(self.state.saga_id, self.owner, context=self.ctx,
                          steps=[step, *self._reached],
                          failed_attempts=self._take_failed_attempts(),
                          consumed_signals=[signal.signal_id] if signal else [])
        completes = self._plan.completes_saga(self.state, name)
        if completes:
            self._completing(work, [])
        elif self.state.status is SagaStatus.WAITING:
            work.status = SagaStatus.RUNNING
        await self.storage.commit(work, self.lease_seconds)
        self.state.steps[name] = step
        self._reached = []
        if signal is not None:
            self.state.signals = [s for s in self.state.signals if s is not signal]
        self.state.status = work.status or self.state.status
        if self.listeners:
            self._notify("step_completed", self.saga.name, self.state.saga_id, name, 0.0)

    async def _park(self, wake_at: float | None) -> None:
        """Store the saga WAITING and let go of it: a worker (or the caller awaiting it)
        resumes it when it is due."""
        state = self.state
        await self.storage.commit(
            UnitOfWork(state.saga_id, self.owner, status=SagaStatus.WAITING, context=self.ctx,
                       steps=self._reached, release_lease=True, wake_at=wake_at,
                       seen_signal_seq=state.signal_seq,
                       failed_attempts=self._take_failed_attempts()),
            self.lease_seconds)
        self._reached = []
        state.status, state.wake_at = SagaStatus.WAITING, wake_at
        state.updated_at = time.time()
        logger.debug("saga %s waits (due %s)", state.saga_id, wake_at,
                     extra={"action": "saga_parked", "saga_id": state.saga_id})
