"""Runs sagas: drives the pure plan, calls actions and compensations with retries and timeouts,
applies the failure strategy to parallel steps and commits every state change before moving on.

Hot path note: a step that is the only runnable one is awaited inline (no task); tasks are created
only when steps really run in parallel. That keeps the per-step engine overhead to a few
microseconds, most of it the storage commit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from typing import TYPE_CHECKING, Any

from sagaz.config import SagaConfig, get_config
from sagaz.engine import plan
from sagaz.engine.context import SagaContext
from sagaz.engine.invoke import BadResult, call_step, changes_of
from sagaz.engine.lease import keeper_for, process_owner
from sagaz.engine.listeners import notify, with_listener_headers
from sagaz.engine.types import (
    FailureStrategy,
    SagaResult,
    SagaState,
    SagaStatus,
    StepRecord,
    StepState,
    StepStatus,
)
from sagaz.errors import (
    LeaseLostError,
    SagaDefinitionError,
    SagaFailedError,
    SagaNotFoundError,
    SagaTimeoutError,
    StorageError,
)
from sagaz.outbox.event import OutboxEvent
from sagaz.storage.audit import AuditEntry, failed_attempt
from sagaz.storage.base import SagaStorage, UnitOfWork
from sagaz.values import UnstorableValueError, check_json, check_text, storable_text

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sagaz.engine.definition import Saga

__all__ = ["SagaExecution", "failure_error", "run_saga"]

logger = logging.getLogger(__name__)

_LIFECYCLE = {SagaStatus.COMPLETED: "SagaCompleted", SagaStatus.COMPENSATED: "SagaCompensated",
              SagaStatus.FAILED: "SagaFailed"}

# Namespace for ids derived from idempotency keys: uuid5(namespace, "<saga name>\0<key>").
IDEMPOTENCY_NAMESPACE = uuid.UUID("5a6a2f1e-7c1b-4b8e-9a51-3d1f0c2b9e77")

# Runs of this process by saga id, so a concurrent start of the same saga in this process gets the
# full outcome (with the original exception) instead of polling the storage.
_local_runs: dict[str, asyncio.Future[SagaResult]] = {}


def saga_id_for(saga_name: str, saga_id: str | None, idempotency_key: str | None) -> str:
    if saga_id is not None and idempotency_key is not None:
        raise SagaDefinitionError("pass saga_id or idempotency_key, not both", saga_name=saga_name)
    if idempotency_key is not None:
        if not isinstance(idempotency_key, str) or not idempotency_key:
            raise SagaDefinitionError("idempotency_key must be a non-empty string",
                                      saga_name=saga_name)
        try:
            check_text(idempotency_key, "the idempotency_key")
        except UnstorableValueError as exc:
            raise SagaDefinitionError(str(exc), saga_name=saga_name) from None
        return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{saga_name}\0{idempotency_key}"))
    if saga_id is None:
        return _random_uuid()
    try:
        return str(uuid.UUID(str(saga_id)))
    except ValueError:
        raise SagaDefinitionError(
            f"saga_id must be a UUID such as {uuid.uuid4()}, got {saga_id!r}; use "
            "idempotency_key=... for arbitrary strings", saga_name=saga_name) from None


def _random_uuid() -> str:
    """A random (version 4) UUID string; the same as ``str(uuid.uuid4())`` at a third of the cost,
    which matters on the hot path of short sagas."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def check_context(saga_name: str, context: Any) -> dict[str, Any]:
    if context is None:
        return {}
    if not isinstance(context, dict):
        raise SagaDefinitionError(
            f"the context must be a dict, got {type(context).__name__}", saga_name=saga_name)
    try:
        if context:
            check_json(context, "the context")
    except UnstorableValueError as exc:
        raise SagaDefinitionError(
            f"the context of saga {saga_name!r} cannot be stored: {exc}", saga_name=saga_name
        ) from exc
    except (TypeError, ValueError) as exc:
        raise SagaDefinitionError(
            f"the context of saga {saga_name!r} is not JSON-serialisable ({exc}); it is "
            "persisted, so use plain JSON values (str, int, float, bool, None, lists, dicts with "
            "str keys)", saga_name=saga_name) from exc
    return dict(context)


async def run_saga(
    saga: Saga,
    context: dict[str, Any] | None,
    *,
    saga_id: str | None = None,
    idempotency_key: str | None = None,
) -> SagaResult:
    """Start (or join) one saga and return its outcome."""
    saga.validate()
    config = saga.config or get_config()
    data = check_context(saga.name, context)
    sid = saga_id_for(saga.name, saga_id, idempotency_key)
    local = _local_runs.get(sid)
    if local is not None and local.get_loop() is asyncio.get_running_loop():
        return await asyncio.shield(local)
    owner = process_owner()
    state = SagaState(sid, saga.name, SagaStatus.RUNNING, data, idempotency_key=idempotency_key,
                      lease_owner=owner)
    stored, created = await config.write_storage.create(state, config.lease_seconds)
    if not created:
        if stored.saga_name != saga.name:
            raise SagaDefinitionError(
                f"saga id {sid} already belongs to saga {stored.saga_name!r}, not {saga.name!r}",
                saga_name=saga.name)
        return await await_outcome(saga, config, sid)
    return await SagaExecution(saga, config, stored, owner).drive()


async def await_outcome(saga: Saga, config: SagaConfig, saga_id: str) -> SagaResult:
    """Wait for a saga run by someone else (another coroutine, process or recovery) to end."""
    local = _local_runs.get(saga_id)
    if local is not None and local.get_loop() is asyncio.get_running_loop():
        return await asyncio.shield(local)
    return await _poll_outcome(saga, config.write_storage, saga_id)


async def _poll_outcome(saga: Saga, storage: SagaStorage, saga_id: str) -> SagaResult:
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


def _describe(exc: BaseException) -> str:
    """The error recorded for a step: storable whatever the exception says, so that recording
    a failure can never be what fails the saga's commit."""
    text = str(exc)
    return storable_text(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


class _Outcome:
    """Why the forward path stopped early."""

    __slots__ = ("error", "step")

    def __init__(self, step: str | None, error: BaseException):
        self.step = step
        self.error = error


class SagaExecution:
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
        self.state = state
        self.owner = owner
        self.recovering = recovering
        self.ctx: dict[str, Any] = dict(state.context)
        self.failure: _Outcome | None = None
        self.deadline_hit = False
        self.pending: dict[str, StepState] = {}  # failed/cancelled, written with COMPENSATING
        self.comp_errors: dict[str, BaseException] = {}
        # Failed attempts not yet in the audit log: they ride along with the next commit.
        self._failed_attempts: list[AuditEntry] = []
        self._action_tasks: dict[str, asyncio.Task[Any]] = {}
        self._cancelled: set[str] = set()
        self._completed_with_last_step = False
        self._started = time.time()

    # -- driving ---------------------------------------------------------------------------------

    async def drive(self) -> SagaResult:
        saga_id = self.state.saga_id
        future: asyncio.Future[SagaResult] = asyncio.get_running_loop().create_future()
        _local_runs[saga_id] = future
        keeper = keeper_for(self.storage, self.owner, self.lease_seconds)
        keeper.add(saga_id)
        try:
            try:
                result = await self._drive()
            except LeaseLostError:
                logger.warning("saga %s taken over by recovery; waiting for its outcome", saga_id,
                               extra={"action": "saga_lease_lost", "saga_id": saga_id})
                keeper.discard(saga_id)
                result = await _poll_outcome(self.saga, self.storage, saga_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: nobody may be waiting
            raise
        finally:
            keeper.discard(saga_id)
            if _local_runs.get(saga_id) is future:
                del _local_runs[saga_id]
        future.set_result(result)
        return result

    async def _drive(self) -> SagaResult:
        state = self.state
        if self.listeners:
            self._notify("saga_started", self.saga.name, state.saga_id, self.ctx)
        if state.status in (SagaStatus.RUNNING, SagaStatus.PENDING):
            command: plan.Command | None = None
            if self.recovering:
                resume = self.saga.recovery == "resume"
                command = plan.decide(self.graph, state, recovering=True, resume=resume)
            if isinstance(command, plan.BeginCompensation):
                uncertain = [self._mark(n, StepStatus.UNKNOWN) for n in command.uncertain]
                await self._begin_compensation(
                    uncertain, None, "executor died mid-saga; recovered by compensation")
            elif await self._forward():
                await self._finish(SagaStatus.COMPLETED)
                return self._result()
            else:
                assert self.failure is not None
                await self._begin_compensation(
                    list(self.pending.values()), self.failure.step, _describe(self.failure.error))
        if not state.status.is_final:
            await self._compensate_all()
        return self._result()

    async def _forward(self) -> bool:
        """Run actions until all completed (True) or a failure/timeout stopped the saga (False)."""
        graph, state = self.graph, self.state
        tasks: dict[str, asyncio.Task[None]] = {}
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        assert main is not None
        deadline = None
        if self.saga.timeout is not None:
            deadline = loop.call_later(self.saga.timeout, self._on_deadline)
        try:
            ready: Sequence[str] = plan.ready_steps(graph, state)
            while self.failure is None:
                if len(ready) == 1 and not tasks:
                    # Sequential fast path: no task, no wait.
                    self._action_tasks[ready[0]] = main
                    await self._run_step(ready[0])
                    ready = plan.unlocked_by(graph, state, ready)
                    continue
                for name in ready:
                    # Registered before it starts, so a cancellation cannot miss it.
                    tasks[name] = self._action_tasks[name] = loop.create_task(self._run_step(name))
                if not tasks:
                    return plan.all_completed(graph, state)
                finished = await self._wait_any(tasks)
                ready = plan.unlocked_by(graph, state, finished, tasks)
            await self._settle(tasks)
            return False
        finally:
            if deadline is not None:
                deadline.cancel()
            for task in tasks.values():
                task.cancel()

    def _on_deadline(self) -> None:
        timeout = self.saga.timeout or 0.0
        running = sorted(self._action_tasks, key=self.graph.order.index)
        self.deadline_hit = True
        if self.failure is None:
            self.failure = _Outcome(running[0] if running else None,
                                    SagaTimeoutError(self.saga.name, timeout))
        self._cancel_actions()

    def _cancel_actions(self) -> None:
        for name, task in list(self._action_tasks.items()):
            self._cancelled.add(name)
            task.cancel()

    async def _wait_any(self, tasks: dict[str, asyncio.Task[None]]) -> list[str]:
        """Wait until at least one task ends; return the names of those that ended."""
        done, _ = await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_COMPLETED)
        finished = [n for n, t in tasks.items() if t in done]
        for name in finished:
            task = tasks.pop(name)
            if task.cancelled():  # cancelled before its first line ran: the action never started
                self._action_tasks.pop(name, None)
                self._stop(name, StepStatus.CANCELLED, None, 0, time.time())
                continue
            task.result()  # re-raise storage errors and lost leases
        return finished

    async def _settle(self, tasks: dict[str, asyncio.Task[None]]) -> None:
        """After a failure: deal with siblings still running, per the failure strategy."""
        strategy = self.saga.failure_strategy
        if tasks and not self.deadline_hit:
            if strategy is FailureStrategy.WAIT_ALL:
                pass
            elif strategy is FailureStrategy.FAIL_FAST_WITH_GRACE:
                await asyncio.wait(tasks.values(), timeout=self.saga.grace_seconds)
                self._cancel_actions()
            else:
                self._cancel_actions()
        while tasks:
            await self._wait_any(tasks)

    # -- one step ------------------------------------------------------------------------------

    async def _run_step(self, name: str) -> None:
        spec = self.saga.step_spec(name)
        policy = spec.retry_policy or self.saga.retry_policy
        started = time.time()
        me = self._action_tasks[name]  # set by the caller: the task running this step
        attempt = 0
        base = self.ctx
        try:
            while True:
                attempt += 1
                if self.listeners:
                    self._notify("step_started", self.saga.name, self.state.saga_id, name, attempt)
                step_ctx = SagaContext(base, self.state.saga_id, self.saga.name, name, attempt)
                try:
                    returned = await call_step(spec.action, spec.is_async, step_ctx, spec.timeout,
                                           name, lambda: name in self._cancelled)
                    changes = changes_of(name, step_ctx, base, returned)
                    events = step_ctx.events
                    break
                except asyncio.CancelledError:
                    if name not in self._cancelled:
                        raise
                    me.uncancel()
                    self._stop(name, StepStatus.CANCELLED, None, attempt, started)
                    return
                except BadResult as exc:
                    # The action ran, so its effects may exist: compensate it like an unknown.
                    self._failed_attempts.append(failed_attempt(name, attempt, exc, time.time()))
                    self._stop(name, StepStatus.UNKNOWN, exc, attempt, started)
                    return
                except Exception as exc:
                    # A step drained after its cancellation gets no further attempt.
                    final = attempt > spec.max_retries or name in self._cancelled
                    self._failed_attempts.append(failed_attempt(name, attempt, exc, time.time()))
                    if self.listeners:
                        self._notify("step_failed", self.saga.name, self.state.saga_id, name,
                                     exc, final)
                    if final:
                        self._stop(name, StepStatus.FAILED, exc, attempt, started)
                        return
                    try:
                        await asyncio.sleep(policy.delay(attempt))
                    except asyncio.CancelledError:
                        if name not in self._cancelled:
                            raise
                        me.uncancel()
                        self._stop(name, StepStatus.CANCELLED, None, attempt, started)
                        return
        finally:
            del self._action_tasks[name]
        before = self.ctx
        if changes:
            self.ctx = {**self.ctx, **changes}
        finished = time.time()
        events = self._headed(name, events)
        step = StepState(name, StepStatus.COMPLETED, changes or None, None, attempt, started,
                         finished)
        work = UnitOfWork(self.state.saga_id, self.owner, context=self.ctx, steps=[step],
                          events=events, failed_attempts=self._take_failed_attempts())
        if self.failure is None and self._completes_saga(name):
            # The last step's completion and the saga's COMPLETED status commit together: one
            # durable write fewer per saga, and recovery sees the same thing either way (before
            # this commit the step had not completed, after it the saga is done).
            work.status, work.release_lease = SagaStatus.COMPLETED, True
            work.events = [*events, *self._lifecycle_events(SagaStatus.COMPLETED)]
        try:
            await self.storage.commit(work, self.lease_seconds)
        except StorageError as exc:
            if not exc.refused:
                raise
            # The storage works but will never keep this result: the step failed. Its action
            # ran, so its effect may exist: it is compensated like a step of unknown outcome.
            self.ctx = before
            self._stop(name, StepStatus.UNKNOWN, exc, attempt, started)
            return
        self.state.steps[name] = step
        self._completed_with_last_step = work.status is SagaStatus.COMPLETED
        if self.listeners:
            self._notify("step_completed", self.saga.name, self.state.saga_id, name,
                         finished - started)

    def _take_failed_attempts(self) -> list[AuditEntry]:
        taken, self._failed_attempts = self._failed_attempts, []
        return taken

    def _lifecycle_events(self, status: SagaStatus) -> list[OutboxEvent]:
        """SagaCompleted / SagaCompensated / SagaFailed, written with the final status."""
        if not self.lifecycle_events:
            return []
        state = self.state
        events = [OutboxEvent(
            _LIFECYCLE[status], {"saga_id": state.saga_id, "saga_name": self.saga.name,
                                 "status": status.value, "failed_step": state.failed_step,
                                 "error": state.error},
            key=state.saga_id, saga_id=state.saga_id)]
        return self._headed(None, events)

    def _headed(self, step: str | None, events: list[OutboxEvent]) -> list[OutboxEvent]:
        return with_listener_headers(self.listeners, self.saga.name, self.state.saga_id, step,
                                     events)

    def _completes_saga(self, name: str) -> bool:
        """Whether ``name`` completing now completes every step of the saga."""
        steps = self.state.steps
        return all(n == name or ((s := steps.get(n)) is not None
                   and s.status is StepStatus.COMPLETED) for n in self.graph.order)

    def _stop(
        self, name: str, status: StepStatus, exc: BaseException | None, attempts: int,
        started: float,
    ) -> None:
        self.pending[name] = StepState(name, status, None, _describe(exc) if exc else None,
                                       attempts, started, time.time())
        if exc is not None and self.failure is None:
            self.failure = _Outcome(name, exc)

    def _mark(self, name: str, status: StepStatus) -> StepState:
        step = (self.state.steps.get(name) or StepState(name)).copy()
        step.status = status
        return step

    # -- compensation --------------------------------------------------------------------------

    async def _begin_compensation(
        self, steps: list[StepState], failed_step: str | None, error: str
    ) -> None:
        await self.storage.commit(
            UnitOfWork(self.state.saga_id, self.owner, status=SagaStatus.COMPENSATING,
                       context=self.ctx, steps=steps, failed_step=failed_step, error=error,
                       failed_attempts=self._take_failed_attempts()),
            self.lease_seconds,
        )
        for step in steps:
            self.state.steps[step.name] = step
        self.state.status = SagaStatus.COMPENSATING
        self.state.failed_step = failed_step
        self.state.error = error

    async def _compensate_all(self) -> None:
        loop = asyncio.get_running_loop()
        tasks: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                command = plan.decide(self.graph, self.state, tasks)
                if isinstance(command, plan.Finish):
                    await self._finish(command.status)
                    return
                if isinstance(command, plan.CompensateSteps):
                    if not tasks and len(command.names) == 1:
                        await self._compensate(command.names[0])
                        continue
                    for name in command.names:
                        tasks[name] = loop.create_task(self._compensate(name))
                await self._wait_any(tasks)
        finally:
            for task in tasks.values():
                task.cancel()

    async def _compensate(self, name: str) -> None:
        spec = self.saga.step_spec(name)
        assert spec.compensation is not None
        policy = spec.retry_policy or self.saga.retry_policy
        if self.listeners:
            self._notify("compensation_started", self.saga.name, self.state.saga_id, name)
        attempt = 0
        error: BaseException | None = None
        base = self.ctx
        changes: dict[str, Any] = {}
        events: list[OutboxEvent] = []
        while True:
            attempt += 1
            step_ctx = SagaContext(base, self.state.saga_id, self.saga.name, name, attempt)
            try:
                returned = await call_step(spec.compensation, spec.compensation_is_async, step_ctx,
                                       spec.timeout, name, lambda: False)
                changes = changes_of(name, step_ctx, base, returned)
                events = self._headed(name, step_ctx.events)
                break
            except Exception as exc:
                self._failed_attempts.append(
                    failed_attempt(name, attempt, exc, time.time(), compensation=True))
                if attempt > spec.max_retries or isinstance(exc, BadResult):
                    error = exc
                    break
                await asyncio.sleep(policy.delay(attempt))
        step = self._mark(name, StepStatus.COMPENSATED if error is None
                          else StepStatus.COMPENSATION_FAILED)
        if error is not None:
            step.compensation_error = _describe(error)
            self.comp_errors[name] = error
            logger.error("compensation of step %s failed in saga %s: %s", name,
                         self.state.saga_id, step.compensation_error,
                         extra={"action": "compensation_failed", "saga_id": self.state.saga_id,
                                "step": name})
        if changes:
            self.ctx = {**self.ctx, **changes}
        await self.storage.commit(
            UnitOfWork(self.state.saga_id, self.owner, context=self.ctx, steps=[step],
                       events=events, failed_attempts=self._take_failed_attempts()),
            self.lease_seconds,
        )
        self.state.steps[name] = step
        if self.listeners:
            self._notify("compensation_completed", self.saga.name, self.state.saga_id, name,
                         error)

    async def _finish(self, status: SagaStatus) -> None:
        if not (status is SagaStatus.COMPLETED and self._completed_with_last_step):
            await self.storage.commit(
                UnitOfWork(self.state.saga_id, self.owner, status=status, context=self.ctx,
                           release_lease=True, events=self._lifecycle_events(status),
                           failed_attempts=self._take_failed_attempts()),
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
            error=self.failure.error if self.failure else None,
            error_message=state.error,
            compensation_errors=dict(self.comp_errors),
        )

    def _notify(self, method: str, *args: Any) -> None:
        notify(self.listeners, method, *args)
