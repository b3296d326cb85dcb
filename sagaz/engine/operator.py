"""Operator verbs: cancel, retry and resume one saga, each recorded in its audit log.

Every verb first **seizes** the saga (:meth:`~sagaz.storage.control.ControlStorage.seize`): it
takes the saga's lease in one transaction with its audit row (who: ``actor`` or the OS user;
why: ``reason``). Taking the lease is the fence: the executor that held it can commit nothing
more, so it stops at its next step boundary (its step's result is refused) and its caller gets
the saga's outcome once the verb has finished it.

* :func:`cancel` (a saga running forward, or waiting): records the request, fences the holder,
  waits until the fenced holder's lease would have run out (it may be finishing the step it was
  in; at most one lease), then compensates what completed, and the step that was in flight, as
  recovery does. The saga ends COMPENSATED (FAILED if a compensation fails), its error says who
  cancelled it and why. Without the saga's definition in this process, the request is recorded
  and the lease handed to whichever worker has it: recovery honours cancel requests.
* :func:`retry` (a FAILED saga: a compensation failed): runs again the compensations that did
  not complete, dependants first.
* :func:`resume` (typically a stuck saga, see :mod:`sagaz.engine.versions`): switches the saga
  to the registered definition the operator names (recorded as the saga's definition) and
  recovers it with that one. Refused while another owner's lease is live.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sagaz.config import SagaConfig, get_config
from sagaz.engine.definition import Saga
from sagaz.engine.executor import SagaExecution
from sagaz.engine.fingerprint import DefinitionShape, shape_of
from sagaz.engine.lease import new_owner
from sagaz.engine.types import SagaResult, SagaState, SagaStatus, StepState, StepStatus
from sagaz.engine.versions import Choice, candidates_for, choose, started_steps
from sagaz.errors import OperatorError, SagaNotFoundError, StorageError
from sagaz.storage.audit import AuditEntry, clip_error
from sagaz.storage.base import UnitOfWork
from sagaz.storage.control import ControlStorage, Seizure, record_shape

__all__ = ["VerbOutcome", "cancel", "check_versions", "drive_claimed", "resume", "retry",
           "who"]

logger = logging.getLogger(__name__)

UNFINISHED = frozenset(s for s in SagaStatus if not s.is_final)
FORWARD = frozenset(s for s in UNFINISHED if s is not SagaStatus.COMPENSATING)
"""Statuses of a saga that still runs (or waits) forward: the ones cancel applies to."""

_FENCE_POLL = 0.02
"""How often a cancel looks whether the executor it fenced has stopped."""

CANCEL_REQUESTED = "cancel_requested"
RETRY_REQUESTED = "retry_requested"
RESUME_REQUESTED = "resume_requested"


@dataclass(frozen=True, slots=True)
class VerbOutcome:
    """What a verb did: the saga's status afterwards and a sentence saying so."""

    saga_id: str
    verb: str
    status: SagaStatus
    message: str


def who(actor: str | None) -> str:
    """The actor recorded for a verb: the given one, else the OS user running it."""
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return f"uid:{os.getuid()}"


def _details(actor: str, reason: str | None, **more: Any) -> dict[str, Any]:
    details: dict[str, Any] = {"actor": clip_error(actor), **more}
    if reason:
        details["reason"] = clip_error(reason)
    return details


def _storage(config: SagaConfig) -> ControlStorage:
    storage = config.write_storage
    if not isinstance(storage, ControlStorage):
        raise StorageError(f"{storage!r} does not support operator verbs (it implements no "
                           "record_definition/seize/release); use the memory, SQLite or "
                           "PostgreSQL storage")
    return storage


async def _load(config: SagaConfig, saga_id: str) -> SagaState:
    state = await config.write_storage.load(saga_id)
    if state is None:
        raise SagaNotFoundError(saga_id)
    return state


def _mark(state: SagaState, name: str, status: StepStatus) -> StepState:
    step = (state.steps.get(name) or StepState(name)).copy()
    step.status = status
    return step


def cancel_reason(request: dict[str, Any]) -> str:
    """What a cancelled saga's error says after ``cancelled: ``: the reason and who gave it."""
    reason, actor = request.get("reason"), request.get("actor")
    return f"{reason} (by {actor})" if reason else f"by {actor}"


async def drive_claimed(saga: Saga, config: SagaConfig, state: SagaState, owner: str) -> SagaResult:
    """Finish a saga whose lease ``owner`` holds (recovery, or a verb), honouring a recorded
    cancel request: the plan then compensates it, its possibly-started steps included."""
    execution = SagaExecution(saga, config, state, owner, recovering=True)
    if state.cancel_requested is not None and state.status in FORWARD:
        execution.request_cancel(clip_error(cancel_reason(state.cancel_requested)))
    return await execution.drive()


def _refuse(state: SagaState, verb: str, allowed: str) -> OperatorError:
    return OperatorError(f"cannot {verb} saga {state.saga_id}: it is {state.status.value}; "
                         f"{verb} applies to {allowed}", saga_id=state.saga_id,
                         status=state.status)


async def cancel(
    saga_id: str,
    *,
    reason: str | None = None,
    actor: str | None = None,
    config: SagaConfig | None = None,
    sagas: Iterable[Saga] = (),
) -> VerbOutcome:
    """Cancel a running or waiting saga: it stops at its next step boundary and what completed is
    compensated. ``sagas`` adds definitions to the registry's for this call."""
    config = config or get_config()
    storage = _storage(config)
    state = await _load(config, saga_id)
    if state.status not in FORWARD:
        raise _refuse(state, "cancel", "a saga that is still running or waiting")
    choice = await choose(config.write_storage, state, sagas)
    by, owner = who(actor), new_owner("cancel")
    request = {"actor": by, "reason": reason, "at": time.time()}
    seized = await storage.seize(Seizure(
        saga_id, owner, config.lease_seconds, FORWARD,
        AuditEntry(CANCEL_REQUESTED, _details(by, reason)), fence_live_holder=True,
        keep_live_expiry=True, hand_off=choice.stuck, cancel=request))
    if seized.state is None:
        raise SagaNotFoundError(saga_id)
    if not seized.seized:
        raise _refuse(seized.state, "cancel", "a saga that is still running or waiting")
    logger.info("saga %s cancelled by %s", saga_id, by,
                extra={"action": "saga_cancel_requested", "saga_id": saga_id, "actor": by})
    if choice.definition is None:
        return VerbOutcome(saga_id, "cancel", seized.state.status,
                           f"cancel recorded; not compensated here ({choice.explain()}): a "
                           "worker that has its definition compensates it")
    state = seized.state
    if seized.fenced and state.lease_expires_at is not None:
        # The fenced executor may still be inside the step it was running: wait until it says
        # it stopped (its next commit was refused) or, if it never does, until its lease would
        # have ended, as recovery would, before undoing anything.
        await _wait_for_fenced(config, saga_id, state.lease_expires_at)
        again = await storage.seize(Seizure(saga_id, owner, config.lease_seconds, UNFINISHED,
                                            None))
        if again.state is None:
            raise SagaNotFoundError(saga_id)
        if not again.seized:
            return VerbOutcome(saga_id, "cancel", again.state.status,
                               "cancel recorded; a worker's recovery took the saga over and "
                               "compensates it")
        state = again.state
    result = await drive_claimed(choice.definition, config, state, owner)
    return VerbOutcome(saga_id, "cancel", result.status,
                       f"cancelled; the saga ended {result.status.value}")


async def _wait_for_fenced(config: SagaConfig, saga_id: str, expires_at: float) -> None:
    deadline = time.monotonic() + min(max(expires_at - time.time(), 0.0), config.lease_seconds)
    while time.monotonic() < deadline:
        current = await config.write_storage.load(saga_id)
        if current is None or current.lease_expires_at is None or (
                current.lease_expires_at < expires_at):  # the fenced executor handed over
            break
        await asyncio.sleep(min(_FENCE_POLL, max(deadline - time.monotonic(), 0.0)))
    await asyncio.sleep(0.01)  # past the lease's end by the storage's clock too


async def retry(
    saga_id: str,
    *,
    reason: str | None = None,
    actor: str | None = None,
    config: SagaConfig | None = None,
    sagas: Iterable[Saga] = (),
) -> VerbOutcome:
    """Run again the compensations of a FAILED saga that did not complete."""
    config = config or get_config()
    storage = _storage(config)
    state = await _load(config, saga_id)
    if state.status is not SagaStatus.FAILED:
        raise _refuse(state, "retry", "a FAILED saga (one whose compensation failed)")
    choice = await choose(config.write_storage, state, sagas)
    if choice.definition is None:
        raise OperatorError(f"cannot retry saga {saga_id}: {choice.explain()}; import the module "
                            "that defines it, or resume the saga with another definition",
                            saga_id=saga_id, status=state.status)
    by, owner = who(actor), new_owner("retry")
    seized = await storage.seize(Seizure(
        saga_id, owner, config.lease_seconds, frozenset({SagaStatus.FAILED}),
        AuditEntry(RETRY_REQUESTED, _details(by, reason))))
    if seized.state is None:
        raise SagaNotFoundError(saga_id)
    if not seized.seized:
        raise OperatorError(f"cannot retry saga {saga_id}: it is {seized.state.status.value} and "
                            "held by another retry", saga_id=saga_id, status=seized.state.status)
    state = seized.state
    again = []
    for step in state.steps.values():
        if step.status is StepStatus.COMPENSATION_FAILED:
            # "May have happened": its compensation may have partly run.
            marked = _mark(state, step.name, StepStatus.UNKNOWN)
            marked.compensation_error = None
            again.append(marked)
    await config.write_storage.commit(
        UnitOfWork(saga_id, owner, status=SagaStatus.COMPENSATING, steps=again),
        config.lease_seconds)
    for step in again:
        state.steps[step.name] = step
    state.status = SagaStatus.COMPENSATING
    logger.info("saga %s: compensations retried by %s", saga_id, by,
                extra={"action": "saga_retry_requested", "saga_id": saga_id, "actor": by})
    result = await SagaExecution(choice.definition, config, state, owner).drive()
    return VerbOutcome(saga_id, "retry", result.status,
                       f"compensations retried; the saga ended {result.status.value}")


def _pick(candidates: list[Saga], wanted: str) -> Saga | None:
    """The definition named by its version label, else by its fingerprint (or a prefix of at
    least 6 hex digits)."""
    for saga in reversed(candidates):
        if saga.version == wanted:
            return saga
    for saga in reversed(candidates):
        fingerprint = shape_of(saga).fingerprint
        if fingerprint == wanted or (len(wanted) >= 6 and fingerprint.startswith(wanted)):
            return saga
    return None


def _uncertain(started: DefinitionShape, state: SagaState) -> list[str]:
    """The steps of the definition the saga started with that may have been running when its
    executor stopped: not started, every dependency completed."""
    def status(name: str) -> StepStatus:
        return state.step_status(name)

    return sorted(s.name for s in started.steps if status(s.name) is StepStatus.PENDING
                  and all(status(d) is StepStatus.COMPLETED for d in s.depends_on))


async def resume(
    saga_id: str,
    definition: str,
    *,
    reason: str | None = None,
    actor: str | None = None,
    force: bool = False,
    config: SagaConfig | None = None,
    sagas: Iterable[Saga] = (),
) -> VerbOutcome:
    """Continue an unfinished saga with the registered definition ``definition`` (its version
    label or fingerprint): the saga records it as its definition and is recovered with it.

    Refused when that definition lacks a step the saga has started (it could not undo it), or
    one that may have been running when the saga's executor stopped; ``force`` accepts the
    latter (recorded in the history as ``abandoned``): such a step's effect, if it had one,
    stays."""
    config = config or get_config()
    storage = _storage(config)
    state = await _load(config, saga_id)
    if state.status.is_final:
        raise _refuse(state, "resume", "an unfinished saga")
    candidates = candidates_for(state.saga_name, sagas)
    target = _pick(candidates, definition)
    if target is None:
        known = ", ".join(shape_of(s).label for s in candidates) or "none"
        raise OperatorError(f"no registered definition of {state.saga_name!r} is {definition!r} "
                            f"(registered: {known}); name one by its version or fingerprint, "
                            "and import the module that defines it", saga_id=saga_id,
                            status=state.status)
    shape = shape_of(target)
    missing = [n for n in started_steps(state) if shape.step(n) is None]
    if missing:
        raise OperatorError(f"cannot resume saga {saga_id} with {shape.label}: it lacks step(s) "
                            f"{', '.join(missing)} that the saga has started, so it could not "
                            "undo them", saga_id=saga_id, status=state.status)
    started = (await storage.load_definition(state.definition_fingerprint)
               if state.definition_fingerprint is not None else None)
    uncertain = _uncertain(started, state) if started is not None else []
    abandoned = [n for n in uncertain if shape.step(n) is None]
    if abandoned and state.status in FORWARD and not force:
        raise OperatorError(
            f"cannot resume saga {saga_id} with {shape.label}: step(s) {', '.join(abandoned)} "
            "may have been running when its executor stopped, and that definition has no such "
            "step to undo it; register the definition the saga started with, or resume with "
            "--force to accept that its effect, if any, stays", saga_id=saga_id,
            status=state.status)
    by, owner = who(actor), new_owner("resume")
    details = _details(by, reason, from_fingerprint=state.definition_fingerprint,
                       from_version=state.definition_version, to_fingerprint=shape.fingerprint,
                       to_version=shape.version)
    if abandoned:
        details["abandoned"] = abandoned
    await record_shape(config.write_storage, shape)
    seized = await storage.seize(Seizure(
        saga_id, owner, config.lease_seconds, UNFINISHED, AuditEntry(RESUME_REQUESTED, details),
        definition=(shape.fingerprint, shape.version)))
    if seized.state is None:
        raise SagaNotFoundError(saga_id)
    if not seized.seized:
        if seized.state.status.is_final:
            raise _refuse(seized.state, "resume", "an unfinished saga")
        raise OperatorError(
            f"cannot resume saga {saga_id}: {seized.previous_owner} holds its lease; an "
            "executor is running it (cancel it instead) or its lease has not run out yet (try "
            "again in a lease's time)", saga_id=saga_id, status=seized.state.status)
    logger.info("saga %s resumed with %s by %s", saga_id, shape.label, by,
                extra={"action": "saga_resume_requested", "saga_id": saga_id, "actor": by,
                       "fingerprint": shape.fingerprint})
    state = seized.state
    if (started is not None and target.recovery == "compensate" and state.status in FORWARD
            and state.cancel_requested is None):
        # What may have been in flight is decided by the definition the saga ran with, not by
        # the new one (whose next steps never ran anywhere).
        steps = [_mark(state, n, StepStatus.UNKNOWN) for n in uncertain if shape.step(n)]
        error = clip_error(f"resumed with {shape.label} by {by}")
        await config.write_storage.commit(
            UnitOfWork(saga_id, owner, status=SagaStatus.COMPENSATING, steps=steps, error=error),
            config.lease_seconds)
        for step in steps:
            state.steps[step.name] = step
        state.status, state.error = SagaStatus.COMPENSATING, error
    result = await drive_claimed(target, config, state, owner)
    return VerbOutcome(saga_id, "resume", result.status,
                       f"resumed with {shape.label}; the saga ended {result.status.value}")


async def check_versions(
    config: SagaConfig | None = None, *, sagas: Iterable[Saga] = (), page: int = 500
) -> list[Choice]:
    """For every unfinished saga: the registered definition that would run it, or why none
    would (``Choice.stuck``)."""
    config = config or get_config()
    storage = config.write_storage
    extra = list(sagas)
    choices = []
    for status in sorted(UNFINISHED):
        offset = 0
        while True:
            found = await storage.list_sagas(status=status, limit=page, offset=offset)
            for state in found:
                full = await storage.load(state.saga_id)
                if full is not None and not full.status.is_final:
                    choices.append(await choose(storage, full, extra))
            if len(found) < page:
                break
            offset += page
    return choices
