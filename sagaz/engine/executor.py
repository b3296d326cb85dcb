"""Runs sagas: executes the commands of the pure plan (:mod:`sagaz.engine.plan`) — calls actions
and compensations through the one retry helper, interrupts steps, commits every state change
before moving on — and feeds back what happened. It decides nothing itself.

Hot path note: a step that is the only runnable one is awaited inline (no task); tasks are created
only when steps really run in parallel. That keeps the per-step engine overhead to a few
microseconds, most of it the storage commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from sagaz.engine import plan
from sagaz.engine.context import SagaContext
from sagaz.engine.executor_waits import DurableWaits, describe
from sagaz.engine.invoke import BadResult, call_step, changes_of
from sagaz.engine.lease import keeper_for
from sagaz.engine.listeners import with_listener_headers
from sagaz.engine.outcomes import local_runs, poll_outcome
from sagaz.engine.retry import attempt_with_retries
from sagaz.engine.types import SagaResult, SagaState, SagaStatus, StepRecord, StepState, StepStatus
from sagaz.errors import LeaseLostError, SagaTimeoutError, StorageError
from sagaz.outbox.event import OutboxEvent
from sagaz.storage.audit import AuditEntry, failed_attempt
from sagaz.storage.base import UnitOfWork
from sagaz.storage.control import stopped_after_fence
from sagaz.values import storable_text

if TYPE_CHECKING:
    from sagaz.config import SagaConfig
    from sagaz.engine.definition import Saga

__all__ = ["SagaExecution"]

logger = logging.getLogger(__name__)

_LIFECYCLE = {SagaStatus.COMPLETED: "SagaCompleted", SagaStatus.COMPENSATED: "SagaCompensated",
              SagaStatus.FAILED: "SagaFailed"}
_RECOVERED = "executor died mid-saga; recovered by compensation"


class SagaExecution(DurableWaits):
    """One run (or recovery) of one saga by this process."""

    def __init__(
        self, saga: Saga, config: SagaConfig, state: SagaState, owner: str,
        *, recovering: bool = False,
    ):
        self.saga = saga
        self.graph = saga.graph
        self.storage = config.write_storage
        self.lease_seconds = config.lease_seconds
        self.listeners = config.listeners
        self.lifecycle_events = config.lifecycle_events
        self.clock = config.clock
        self._config = config
        self.state = state
        self.owner = owner
        self.recovering = recovering
        self.plan = plan.SagaPlan(
            self.graph, saga.failure_strategy, saga.grace_seconds, recovering=recovering,
            resume=saga.recovery == "resume")
        self.ctx: dict[str, Any] = dict(state.context)
        self.error: BaseException | None = None  # why the forward path stopped, for the result
        self.pending: dict[str, StepState] = {}  # failed/cancelled, written with COMPENSATING
        self.comp_errors: dict[str, BaseException] = {}
        # Failed attempts not yet in the audit log: they ride along with the next commit.
        self._failed_attempts: list[AuditEntry] = []
        self._action_tasks: dict[str, asyncio.Task[Any]] = {}
        self._cancelled: set[str] = set()
        self._deadline: asyncio.TimerHandle | None = None
        self._reached: list[StepState] = []  # waits reached, written with the next commit
        self._started = time.time()

    @property
    def _plan(self) -> plan.SagaPlan:
        return self.plan

    def request_cancel(self, reason: str | None = None) -> None:
        """Stop at the next step boundary and compensate what completed."""
        self.plan.request_cancel(reason)

    # -- driving ---------------------------------------------------------------------------------

    async def drive(self) -> SagaResult:
        saga_id = self.state.saga_id
        future: asyncio.Future[SagaResult] = asyncio.get_running_loop().create_future()
        local_runs[saga_id] = future
        keeper = keeper_for(self.storage, self.owner, self.lease_seconds)
        keeper.add(saga_id)
        try:
            try:
                result = await self._drive()
            except LeaseLostError as lost:
                logger.warning("saga %s taken over by recovery; waiting for its outcome", saga_id,
                               extra={"action": "saga_lease_lost", "saga_id": saga_id})
                self._notify("saga_interrupted", self.saga.name, saga_id, lost)  # rare: no guard
                keeper.discard(saga_id)
                await stopped_after_fence(self.storage, saga_id, self.owner)
                if local_runs.get(saga_id) is future:
                    del local_runs[saga_id]  # joiners now follow the storage, as we do
                result = await self._outcome_elsewhere()
        except BaseException as exc:
            if not isinstance(exc, LeaseLostError):
                self._notify("saga_interrupted", self.saga.name, saga_id, exc)
            future.set_exception(exc)
            future.exception()  # mark retrieved: nobody may be waiting
            raise
        finally:
            keeper.discard(saga_id)
            if local_runs.get(saga_id) is future:
                del local_runs[saga_id]
        future.set_result(result)
        return result

    async def _outcome_elsewhere(self) -> SagaResult:
        """The outcome of the saga another executor took over (it may park it on the way)."""
        from sagaz.engine.waits import await_through_waits

        if self.graph.waits:
            return await await_through_waits(self.saga, self._config, self.state.saga_id)
        return await poll_outcome(self.saga, self.storage, self.state.saga_id)

    async def _drive(self) -> SagaResult:
        """The command loop: ask the plan, run what it says, tell it what happened."""
        state, decide = self.state, self.plan.next
        clock = self.clock if self.graph.waits else None
        if self.listeners:
            if self.recovering:
                self._notify("saga_recovered", self.saga.name, state.saga_id)
            self._notify("saga_started", self.saga.name, state.saga_id, self.ctx)
        main = asyncio.current_task()
        assert main is not None
        loop = asyncio.get_running_loop()
        tasks: dict[str, asyncio.Task[None]] = {}  # actions or compensations, never both
        finished: list[str] | tuple[str, ...] | None = None
        try:
            while True:
                command = decide(state, tasks, finished, clock.now() if clock else 0.0)
                finished = None
                if isinstance(command, plan.RunSteps):
                    if self._deadline is None and self.saga.timeout is not None:
                        self._deadline = loop.call_later(self.saga.timeout, self._on_deadline)
                    if len(command.names) == 1 and not tasks:
                        # Sequential fast path: no task, no wait.
                        self._action_tasks[command.names[0]] = main
                        await self._run_step(command.names[0])
                        finished = command.names
                        continue
                    for name in command.names:
                        # Registered before it starts, so a cancellation cannot miss it.
                        tasks[name] = self._action_tasks[name] = loop.create_task(
                            self._run_step(name))
                elif isinstance(command, plan.AwaitSteps):
                    if command.every:
                        await asyncio.wait(tasks.values(), timeout=command.timeout)
                        self.plan.grace_ended()
                        finished = self._collect(tasks)
                    else:
                        finished = await self._wait_any(tasks)
                elif isinstance(command, plan.CancelSteps):
                    self._cancel_actions(command.names)
                elif isinstance(command, plan.BeginCompensation):
                    self._disarm_deadline()
                    await self._begin_compensation(command)
                elif isinstance(command, plan.CompensateSteps):
                    if not tasks and len(command.names) == 1:
                        await self._compensate(command.names[0])
                        continue
                    for name in command.names:
                        tasks[name] = loop.create_task(self._compensate(name))
                elif isinstance(command, plan.ReachWaits):
                    self._reach(command.names)
                elif isinstance(command, plan.ResolveWait):
                    await self._resolve_wait(command)
                elif isinstance(command, plan.Park):
                    self._disarm_deadline()
                    await self._park(command.wake_at)
                    return self._result()
                else:
                    self._disarm_deadline()
                    await self._finish(command)
                    return self._result()
        finally:
            self._disarm_deadline()
            for task in tasks.values():
                task.cancel()

    def _disarm_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()

    def _on_deadline(self) -> None:
        command = self.plan.deadline(self._action_tasks)
        if self.error is None:
            self.error = SagaTimeoutError(self.saga.name, self.saga.timeout or 0.0)
        self._cancel_actions(command.names)

    def _cancel_actions(self, names: tuple[str, ...]) -> None:
        for name in names:
            task = self._action_tasks.get(name)
            if task is not None:
                self._cancelled.add(name)
                task.cancel()

    async def _wait_any(self, tasks: dict[str, asyncio.Task[None]]) -> list[str]:
        """Wait until at least one task ends; return the names of those that ended."""
        await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_COMPLETED)
        return self._collect(tasks)

    def _collect(self, tasks: dict[str, asyncio.Task[None]]) -> list[str]:
        """Take the tasks that ended out of ``tasks``; return their names."""
        finished = [n for n, t in tasks.items() if t.done()]
        for name in finished:
            task = tasks.pop(name)
            if task.cancelled():  # cancelled before its first line ran: the action never started
                self._action_tasks.pop(name, None)
                self._stop(name, StepStatus.CANCELLED, None, 0, time.time())
                continue
            task.result()  # re-raise storage errors and lost leases
        return finished

    # -- one step ------------------------------------------------------------------------------

    async def _run_step(self, name: str) -> None:
        spec = self.saga.step_spec(name)
        saga_id, saga_name = self.state.saga_id, self.saga.name
        started = time.time()
        me = self._action_tasks[name]  # set by the caller: the task running this step
        base = self.ctx
        last = 0

        def draining() -> bool:
            return name in self._cancelled

        async def attempt(number: int) -> tuple[dict[str, Any], list[OutboxEvent]]:
            nonlocal last
            last = number
            if self.listeners:
                self._notify("step_started", saga_name, saga_id, name, number)
            step_ctx = SagaContext(base, saga_id, saga_name, name, number)
            returned = await call_step(spec.action, spec.is_async, step_ctx, spec.timeout, name,
                                       draining)
            return changes_of(name, step_ctx, base, returned), step_ctx.events

        def verdict(number: int, exc: Exception) -> plan.RetryAfter | plan.GiveUp:
            return plan.after_failed_attempt(number, spec.max_retries,
                                             bad_result=isinstance(exc, BadResult),
                                             draining=draining())

        def failed(number: int, exc: Exception, final: bool) -> None:
            self._failed_attempts.append(failed_attempt(name, number, exc, time.time()))
            if self.listeners and not isinstance(exc, BadResult):
                self._notify("step_failed", saga_name, saga_id, name, exc, final)

        try:
            outcome = await attempt_with_retries(
                attempt, verdict, spec.retry_policy or self.saga.retry_policy, failed)
        except asyncio.CancelledError:
            if name not in self._cancelled:
                raise
            me.uncancel()
            self._stop(name, StepStatus.CANCELLED, None, last, started)
            return
        finally:
            del self._action_tasks[name]
        if outcome.gave_up is not None:
            self._stop(name, outcome.gave_up, outcome.error, outcome.attempts, started)
            return
        assert outcome.value is not None
        changes, events = outcome.value
        events = self._headed(name, events)
        before = self.ctx
        if changes:
            self.ctx = {**self.ctx, **changes}
        finished = time.time()
        step = StepState(name, StepStatus.COMPLETED, changes or None, None, outcome.attempts,
                         started, finished)
        work = UnitOfWork(saga_id, self.owner, context=self.ctx, steps=[step, *self._reached],
                          events=events, failed_attempts=self._take_failed_attempts())
        completes = self.plan.completes_saga(self.state, name)
        if completes:
            self._completing(work, events)
        try:
            await self.storage.commit(work, self.lease_seconds)
        except StorageError as exc:
            if not exc.refused:
                raise
            # The storage works but will never keep this result: the step failed. Its action
            # ran, so its effect may exist: it is compensated like a step of unknown outcome.
            self.ctx = before
            self._stop(name, StepStatus.UNKNOWN, exc, outcome.attempts, started)
            return
        self.state.steps[name] = step
        self._reached = []
        if completes:
            self.state.status = SagaStatus.COMPLETED
        if self.listeners:
            self._notify("step_completed", saga_name, saga_id, name, finished - started)

    def _completing(self, work: UnitOfWork, events: list[OutboxEvent]) -> None:
        """This unit's step completes the saga: the COMPLETED status commits with it."""
        work.status, work.release_lease = SagaStatus.COMPLETED, True
        work.events = [*events, *self._lifecycle_events(SagaStatus.COMPLETED)]
        work.forget_signals = bool(self.graph.waits)

    def _take_failed_attempts(self) -> list[AuditEntry]:
        taken, self._failed_attempts = self._failed_attempts, []
        return taken

    def _lifecycle_events(self, status: SagaStatus) -> list[OutboxEvent]:
        """SagaCompleted / SagaCompensated / SagaFailed, written with the final status."""
        if not self.lifecycle_events:
            return []
        state = self.state
        return self._headed(None, [OutboxEvent(
            _LIFECYCLE[status], {"saga_id": state.saga_id, "saga_name": self.saga.name,
                                 "status": status.value, "failed_step": state.failed_step,
                                 "error": state.error},
            key=state.saga_id, saga_id=state.saga_id)])

    def _headed(self, step: str | None, events: list[OutboxEvent]) -> list[OutboxEvent]:
        """The events with the headers listeners add (the trace context), before the commit."""
        return with_listener_headers(self.listeners, self.saga.name, self.state.saga_id, step,
                                     events)

    def _stop(
        self, name: str, status: StepStatus, exc: BaseException | None, attempts: int,
        started: float,
    ) -> None:
        """A step's action ended without completing: kept for the COMPENSATING commit, told to
        the plan."""
        status = self.plan.ended_as(name, status)
        self.pending[name] = StepState(name, status, None, describe(exc) if exc else None,
                                       attempts, started, time.time())
        if exc is not None and self.error is None:
            self.error = exc
        self.plan.step_ended(name, status)

    def _mark(self, name: str, status: StepStatus) -> StepState:
        step = (self.state.steps.get(name) or StepState(name)).copy()
        step.status = status
        return step

    # -- compensation --------------------------------------------------------------------------

    def _why(self, command: plan.BeginCompensation) -> str:
        if command.why is plan.Stop.RECOVERED:
            return _RECOVERED
        if command.why is plan.Stop.CANCELLED:
            reason = self.plan.cancel_reason
            return storable_text(f"cancelled: {reason}" if reason else "cancelled")
        assert self.error is not None
        return describe(self.error)

    async def _begin_compensation(self, command: plan.BeginCompensation) -> None:
        steps = [*self._reached, *self.pending.values(),
                 *(self._mark(n, StepStatus.UNKNOWN) for n in command.uncertain)]
        self._reached = []
        error = self._why(command)
        await self.storage.commit(
            UnitOfWork(self.state.saga_id, self.owner, status=SagaStatus.COMPENSATING,
                       context=self.ctx, steps=steps, failed_step=command.failed_step, error=error,
                       failed_attempts=self._take_failed_attempts()),
            self.lease_seconds,
        )
        for step in steps:
            self.state.steps[step.name] = step
        self.state.status = SagaStatus.COMPENSATING
        self.state.failed_step = command.failed_step
        self.state.error = error

    async def _compensate(self, name: str) -> None:
        spec = self.saga.step_spec(name)
        compensation = spec.compensation
        assert compensation is not None
        saga_id, saga_name = self.state.saga_id, self.saga.name
        if self.listeners:
            self._notify("compensation_started", saga_name, saga_id, name)
        base = self.ctx

        async def attempt(number: int) -> tuple[dict[str, Any], list[OutboxEvent]]:
            step_ctx = SagaContext(base, saga_id, saga_name, name, number)
            returned = await call_step(compensation, spec.compensation_is_async, step_ctx,
                                       spec.timeout, name, lambda: False)
            return changes_of(name, step_ctx, base, returned), step_ctx.events

        def verdict(number: int, exc: Exception) -> plan.RetryAfter | plan.GiveUp:
            return plan.after_failed_compensation(number, spec.max_retries,
                                                  bad_result=isinstance(exc, BadResult))

        def failed(number: int, exc: Exception, final: bool) -> None:
            self._failed_attempts.append(
                failed_attempt(name, number, exc, time.time(), compensation=True))

        outcome = await attempt_with_retries(
            attempt, verdict, spec.retry_policy or self.saga.retry_policy, failed)
        changes, events = outcome.value if outcome.value is not None else ({}, [])
        events = self._headed(name, events)
        error = outcome.error
        step = self._mark(name, StepStatus.COMPENSATED if error is None
                          else StepStatus.COMPENSATION_FAILED)
        if error is not None:
            step.compensation_error = describe(error)
            self.comp_errors[name] = error
            logger.error("compensation of step %s failed in saga %s: %s", name, saga_id,
                         step.compensation_error,
                         extra={"action": "compensation_failed", "saga_id": saga_id,
                                "step": name})
        if changes:
            self.ctx = {**self.ctx, **changes}
        await self.storage.commit(
            UnitOfWork(saga_id, self.owner, context=self.ctx, steps=[step],
                       events=events, failed_attempts=self._take_failed_attempts()),
            self.lease_seconds,
        )
        self.state.steps[name] = step
        if self.listeners:
            self._notify("compensation_completed", saga_name, saga_id, name, error)

    async def _finish(self, command: plan.Finish) -> None:
        status = command.status
        if command.record:
            await self.storage.commit(
                UnitOfWork(self.state.saga_id, self.owner, status=status, context=self.ctx,
                           release_lease=True, events=self._lifecycle_events(status),
                           failed_attempts=self._take_failed_attempts(),
                           forget_signals=bool(self.graph.waits)),
                self.lease_seconds,
            )
        self.state.status = status
        self.state.updated_at = time.time()
        if self.listeners:
            self._notify("saga_finished", self.saga.name, self.state.saga_id, status.value,
                         self.state.updated_at - self._started)

    # -- reporting -----------------------------------------------------------------------------

    def _result(self) -> SagaResult:
        state = self.state
        records = []
        for name in self.graph.order:
            s = state.steps.get(name) or StepState(name)
            records.append(StepRecord(name, s.status, s.attempts, s.started_at, s.finished_at,
                                      s.error, s.compensation_error))
        return SagaResult(
            saga_id=state.saga_id,
            saga_name=state.saga_name,
            status=state.status,
            context=self.ctx,
            steps=records,
            started_at=self._started,
            finished_at=state.updated_at,
            failed_step=state.failed_step,
            error=self.error,
            error_message=state.error,
            compensation_errors=dict(self.comp_errors),
        )

    def _notify(self, method: str, *args: Any) -> None:
        for listener in self.listeners:
            try:
                getattr(listener, method)(*args)
            except Exception:
                logger.exception("listener %r failed in %s", listener, method,
                                 extra={"action": "listener_failed"})


def __getattr__(name: str) -> Any:
    """Names that lived here before starting a saga moved to :mod:`sagaz.engine.starting`."""
    if name in ("run_saga", "saga_id_for", "check_context", "await_outcome",
                "IDEMPOTENCY_NAMESPACE"):
        from sagaz.engine import starting

        return getattr(starting, name)
    if name == "failure_error":
        from sagaz.engine.outcomes import failure_error

        return failure_error
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
