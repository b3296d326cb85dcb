"""The pure decision core of the saga state machine.

Every decision about a saga is made here: which steps run next (parallel levels), what a failure
does to running siblings (the failure strategy), what the saga deadline and a cancel request do,
whether a failed attempt is retried, whether a step's completion completes the saga, the order of
compensations and the final status. No I/O, no clock, no randomness: the executor feeds in what
happened (events) and runs the commands it gets back; recovery drives the same plan from the
persisted state, and tests replay any interrupted sequence through it.

:class:`SagaPlan` holds what one run of one saga has learnt that is not persisted yet (a failure
recorded with the next commit, a deadline, a cancel request); everything else is read from the
:class:`~sagaz.engine.types.SagaState` passed to :meth:`SagaPlan.next`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sagaz.engine.types import FailureStrategy, SagaState, SagaStatus, Signal, StepStatus

__all__ = [
    "AwaitSteps",
    "BeginCompensation",
    "CancelSteps",
    "Command",
    "CompensateSteps",
    "Finish",
    "GiveUp",
    "Graph",
    "Park",
    "ReachWaits",
    "ResolveWait",
    "RetryAfter",
    "RunSteps",
    "SagaPlan",
    "Stop",
    "WaitSpec",
    "after_failed_attempt",
    "after_failed_compensation",
]


@dataclass(frozen=True, slots=True)
class WaitSpec:
    """A durable wait step: it completes when ``signal`` arrives (its payload merges into the
    context) or, after ``timeout`` seconds, times out: the step fails (and the saga compensates)
    unless ``on_timeout`` gives the context to continue with. A delay is a wait for no signal
    whose timeout continues."""

    signal: str | None
    timeout: float | None
    on_timeout: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Graph:
    """A validated step graph. ``order`` is definition order; ``deps`` maps a step to the steps it
    waits for; ``dependants`` is the reverse; ``compensable`` holds steps with a compensation;
    ``waits`` the steps that are durable waits."""

    order: tuple[str, ...]
    deps: dict[str, tuple[str, ...]]
    dependants: dict[str, tuple[str, ...]]
    compensable: frozenset[str]
    waits: dict[str, WaitSpec] = field(default_factory=dict)

    @staticmethod
    def build(
        order: Iterable[str], deps: dict[str, tuple[str, ...]], compensable: Iterable[str],
        waits: dict[str, WaitSpec] | None = None,
    ) -> Graph:
        names = tuple(order)
        dependants: dict[str, list[str]] = {n: [] for n in names}
        for name in names:
            for dep in deps[name]:
                dependants[dep].append(name)
        return Graph(
            names, dict(deps), {k: tuple(v) for k, v in dependants.items()},
            frozenset(compensable), dict(waits or {}),
        )


# -- commands ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunSteps:
    """Start these steps' actions (they are ready and not in flight)."""

    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CancelSteps:
    """Interrupt these in-flight actions; each ends CANCELLED unless it already finished."""

    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AwaitSteps:
    """Nothing new to start: wait until a step in flight ends. With ``every`` wait for all of
    them, at most ``timeout`` seconds, then report :meth:`SagaPlan.grace_ended`."""

    every: bool = False
    timeout: float | None = None


class Stop(StrEnum):
    """Why the forward path stopped."""

    FAILED = "FAILED"
    """A step failed (or its outcome is unknown)."""
    DEADLINE = "DEADLINE"
    """The saga's timeout passed."""
    CANCELLED = "CANCELLED"
    """Cancellation was requested."""
    RECOVERED = "RECOVERED"
    """The executor died mid-saga and the saga is recovered by compensation."""


@dataclass(frozen=True, slots=True)
class BeginCompensation:
    """Switch a RUNNING saga to COMPENSATING. ``uncertain`` steps may have run before the executor
    died: they are recorded UNKNOWN so that they are compensated too. ``failed_step`` and ``why``
    are recorded with the saga."""

    uncertain: tuple[str, ...]
    failed_step: str | None = None
    why: Stop = Stop.FAILED


@dataclass(frozen=True, slots=True)
class CompensateSteps:
    """Run these compensations (all their dependants are already compensated)."""

    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Finish:
    """The saga ended with ``status``; ``record`` is False when that status is already stored
    (the last step's completion committed it)."""

    status: SagaStatus
    record: bool = True


@dataclass(frozen=True, slots=True)
class ReachWaits:
    """These waits are reached now: record when (their timeouts count from then)."""

    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ResolveWait:
    """The wait ends: with ``signal`` (consume it, merge its payload), or timed out: then it
    completes with ``on_timeout`` as its result, or fails when that is None."""

    name: str
    signal: Signal | None = None
    on_timeout: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Park:
    """Nothing can go on before a signal or a timer: store the saga WAITING, due at ``wake_at``
    (None: only a signal wakes it), and let go of it."""

    wake_at: float | None


Command = (RunSteps | CancelSteps | AwaitSteps | BeginCompensation | CompensateSteps | Finish
           | ReachWaits | ResolveWait | Park)


@dataclass(frozen=True, slots=True)
class RetryAfter:
    """Attempt again after the retry policy's delay for retry number ``retry``."""

    retry: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    """No further attempt: the step (or its compensation) ends with ``status``."""

    status: StepStatus


# -- retries -------------------------------------------------------------------------------------


def after_failed_attempt(
    attempt: int, max_retries: int, *, bad_result: bool = False, draining: bool = False
) -> RetryAfter | GiveUp:
    """What follows a failed attempt of an action. A result that cannot be stored means the action
    ran (its effects may exist): the step is UNKNOWN and gets compensated. A step drained after
    its cancellation gets no further attempt."""
    if bad_result:
        return GiveUp(StepStatus.UNKNOWN)
    if attempt > max_retries or draining:
        return GiveUp(StepStatus.FAILED)
    return RetryAfter(attempt)


def after_failed_compensation(
    attempt: int, max_retries: int, *, bad_result: bool = False
) -> RetryAfter | GiveUp:
    """What follows a failed attempt of a compensation (it shares its step's retry budget)."""
    if bad_result or attempt > max_retries:
        return GiveUp(StepStatus.COMPENSATION_FAILED)
    return RetryAfter(attempt)


# -- graph queries -------------------------------------------------------------------------------

# Step statuses whose effects may exist and so need undoing.
_NEEDS_UNDO = frozenset({StepStatus.COMPLETED, StepStatus.UNKNOWN})
_ENDS_FORWARD_PATH = frozenset({StepStatus.FAILED, StepStatus.UNKNOWN})


def ready_steps(graph: Graph, state: SagaState, in_flight: Collection[str] = ()) -> tuple[str, ...]:
    """Steps whose dependencies all completed and that have not started yet."""
    steps = state.steps
    ready = []
    for name in graph.order:
        own = steps.get(name)
        if (own is not None and own.status is not StepStatus.PENDING) or name in in_flight:
            continue
        for dep in graph.deps[name]:
            dep_state = steps.get(dep)
            if dep_state is None or dep_state.status is not StepStatus.COMPLETED:
                break
        else:
            ready.append(name)
    return tuple(ready)


def unlocked_by(
    graph: Graph, state: SagaState, finished: Iterable[str], in_flight: Collection[str] = ()
) -> list[str]:
    """Steps that became ready because the ``finished`` steps completed. Same answer as
    :func:`ready_steps` restricted to their dependants, without scanning the whole graph."""
    steps = state.steps
    ready: list[str] = []
    for done in finished:
        own = steps.get(done)
        if own is None or own.status is not StepStatus.COMPLETED:
            continue
        for name in graph.dependants[done]:
            if name in in_flight or name in ready:
                continue
            current = steps.get(name)
            if current is not None and current.status is not StepStatus.PENDING:
                continue
            for dep in graph.deps[name]:
                dep_state = steps.get(dep)
                if dep_state is None or dep_state.status is not StepStatus.COMPLETED:
                    break
            else:
                ready.append(name)
    return ready


def all_completed(graph: Graph, state: SagaState, but: str | None = None) -> bool:
    """Whether every step (``but`` aside) is COMPLETED."""
    steps = state.steps
    for name in graph.order:
        if name == but:
            continue
        own = steps.get(name)
        if own is None or own.status is not StepStatus.COMPLETED:
            return False
    return True


def _needs_undo(graph: Graph, state: SagaState, name: str) -> bool:
    return name in graph.compensable and state.step_status(name) in _NEEDS_UNDO


def compensation_ready(
    graph: Graph, state: SagaState, in_flight: Collection[str] = ()
) -> tuple[str, ...]:
    """Steps to compensate now: every dependant that needed undoing is already undone."""
    ready = []
    for name in reversed(graph.order):
        if name in in_flight or not _needs_undo(graph, state, name):
            continue
        if all(not _needs_undo(graph, state, d) for d in graph.dependants[name]):
            ready.append(name)
    return tuple(ready)


def compensation_outcome(graph: Graph, state: SagaState) -> SagaStatus:
    failed = any(state.step_status(n) is StepStatus.COMPENSATION_FAILED for n in graph.order)
    return SagaStatus.FAILED if failed else SagaStatus.COMPENSATED


# -- the plan ------------------------------------------------------------------------------------


@dataclass(slots=True)
class SagaPlan:
    """The decisions for one run (or recovery) of one saga.

    ``recovering`` is set when the executor that ran the saga died: a RUNNING saga is then
    compensated (its possibly-started steps included) unless ``resume`` asks to go forward.
    """

    graph: Graph
    strategy: FailureStrategy = FailureStrategy.FAIL_FAST
    grace_seconds: float = 2.0
    recovering: bool = False
    resume: bool = False
    stop: Stop | None = None
    failed_step: str | None = None
    cancel_reason: str | None = None
    deadline_passed: bool = False
    grace_over: bool = False
    grace_started: bool = False
    cancelling: set[str] = field(default_factory=set)
    uncertain: set[str] = field(default_factory=set)
    """Resumed after a crash: steps that may have run before it. Run again, they keep that
    uncertainty if they do not complete this time (see :meth:`ended_as`)."""

    # -- events ----------------------------------------------------------------------------------

    def ended_as(self, name: str, status: StepStatus) -> StepStatus:
        """The status to record for a step whose action ended without completing. A step that
        may have run before the crash and now failed or was cancelled may still have the first
        run's effect: it is UNKNOWN, so that it is compensated."""
        if name in self.uncertain and status in (StepStatus.FAILED, StepStatus.CANCELLED):
            return StepStatus.UNKNOWN
        return status

    def step_ended(self, name: str, status: StepStatus) -> None:
        """A step's action ended without completing (FAILED, UNKNOWN or CANCELLED); completions
        are read from the state."""
        if status in _ENDS_FORWARD_PATH and self.stop is None:
            self.stop, self.failed_step = Stop.FAILED, name

    def deadline(self, in_flight: Collection[str]) -> CancelSteps:
        """The saga's timeout passed: every running action is interrupted and the first of them
        (in definition order) is the step the saga failed at."""
        self.deadline_passed = True
        if self.stop is None or self.stop is Stop.CANCELLED:
            running = [n for n in self.graph.order if n in in_flight]
            self.stop, self.failed_step = Stop.DEADLINE, (running[0] if running else None)
        return CancelSteps(self._cancel(in_flight))

    def request_cancel(self, reason: str | None = None) -> None:
        """Cancellation was requested: no step starts any more; the running ones finish (the
        next step boundary) and what completed is compensated."""
        if self.stop is None:
            self.stop, self.cancel_reason = Stop.CANCELLED, reason

    def grace_ended(self) -> None:
        self.grace_over = True

    def completes_saga(self, state: SagaState, name: str) -> bool:
        """Whether ``name`` completing now completes the saga: then the step's completion and the
        COMPLETED status commit together (one durable write fewer, and recovery sees the same
        thing either way: before the commit the step had not completed, after it the saga is
        done)."""
        return self.stop is None and all_completed(self.graph, state, but=name)

    # -- decisions -------------------------------------------------------------------------------

    def next(
        self, state: SagaState, in_flight: Collection[str] = (),
        finished: Iterable[str] | None = None, now: float = 0.0,
    ) -> Command:
        """The next command. ``finished`` (steps that just ended) lets the forward path look only
        at their dependants instead of the whole graph. ``now`` (the engine's clock) matters to
        sagas with waits only."""
        status = state.status
        if status.is_final:
            return Finish(status, record=False)
        if status is SagaStatus.COMPENSATING:
            return self._next_compensation(state, in_flight)
        graph = self.graph
        if self.recovering:
            self.recovering = False
            if not self.resume or self.stop is Stop.CANCELLED:
                # The executor died: the steps it could have been running may have happened.
                return BeginCompensation(ready_steps(graph, state), None, self.stop or
                                         Stop.RECOVERED)
            self.uncertain = set(ready_steps(graph, state))
        if self.stop is None:
            if graph.waits:
                return self._next_with_waits(state, in_flight, now)
            ready = (ready_steps(graph, state, in_flight) if finished is None
                     else unlocked_by(graph, state, finished, in_flight))
            if ready:
                return RunSteps(tuple(ready))
            if in_flight:
                return AwaitSteps()
            if all_completed(graph, state):
                return Finish(SagaStatus.COMPLETED)
            raise AssertionError(f"saga {state.saga_id} is RUNNING with nothing runnable: {state}")
        cancel = self._cancel(in_flight)
        if cancel:
            return CancelSteps(cancel)
        if in_flight:
            if (self.strategy is FailureStrategy.FAIL_FAST_WITH_GRACE and self.stop is Stop.FAILED
                    and not self.grace_started):
                self.grace_started = True
                return AwaitSteps(every=True, timeout=self.grace_seconds)
            return AwaitSteps()
        return BeginCompensation((), self.failed_step, self.stop)

    def _next_with_waits(self, state: SagaState, in_flight: Collection[str], now: float) -> Command:
        """The forward path of a saga with waits: actions first, then waits that can end (a
        signal is there, or the timeout passed), then newly reached waits; park when only open
        waits are left."""
        graph = self.graph
        ready = ready_steps(graph, state, in_flight)
        actions = tuple(n for n in ready if n not in graph.waits)
        if actions:
            return RunSteps(actions)
        reach: list[str] = []
        wake_at: float | None = None
        for name in ready:
            spec = graph.waits[name]
            signal = next((s for s in state.signals if s.name == spec.signal), None)
            if signal is not None:
                return ResolveWait(name, signal)
            reached = state.steps.get(name)
            if reached is None or reached.started_at is None:
                reach.append(name)
            elif spec.timeout is not None:
                due = reached.started_at + spec.timeout
                if now >= due:
                    return ResolveWait(name, None, spec.on_timeout)
                wake_at = due if wake_at is None else min(wake_at, due)
        if reach:
            return ReachWaits(tuple(reach))
        if in_flight:
            return AwaitSteps()
        if ready:
            return Park(wake_at)
        if all_completed(graph, state):
            return Finish(SagaStatus.COMPLETED)
        raise AssertionError(f"saga {state.saga_id} is RUNNING with nothing runnable: {state}")

    def _cancel(self, in_flight: Collection[str]) -> tuple[str, ...]:
        """In-flight actions to interrupt now, given why the forward path stopped."""
        if self.deadline_passed:
            interrupt = True
        elif self.stop is Stop.FAILED:
            interrupt = (self.strategy is FailureStrategy.FAIL_FAST or (
                self.strategy is FailureStrategy.FAIL_FAST_WITH_GRACE and self.grace_over))
        else:  # not stopped, or cancelled: running steps reach their boundary
            interrupt = False
        if not interrupt:
            return ()
        names = tuple(n for n in in_flight if n not in self.cancelling)
        self.cancelling.update(names)
        return names

    def _next_compensation(self, state: SagaState, in_flight: Collection[str]) -> Command:
        ready = compensation_ready(self.graph, state, in_flight)
        if ready:
            return CompensateSteps(ready)
        if in_flight:
            return AwaitSteps()
        return Finish(compensation_outcome(self.graph, state))
