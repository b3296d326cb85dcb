"""The pure decision core of the saga state machine.

Given a saga's dependency graph and its persisted state (plus the steps the executor has in flight),
say what to do next. No I/O, no clock, no randomness: the executor and recovery both drive sagas
through these functions, and tests replay any interrupted sequence through them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from sagaz.engine.types import SagaState, SagaStatus, StepStatus

__all__ = [
    "BeginCompensation",
    "Command",
    "CompensateSteps",
    "Finish",
    "Graph",
    "RunSteps",
    "Wait",
    "decide",
]


@dataclass(frozen=True, slots=True)
class Graph:
    """A validated step graph. ``order`` is definition order; ``deps`` maps a step to the steps it
    waits for; ``dependants`` is the reverse; ``compensable`` holds steps with a compensation."""

    order: tuple[str, ...]
    deps: dict[str, tuple[str, ...]]
    dependants: dict[str, tuple[str, ...]]
    compensable: frozenset[str]

    @staticmethod
    def build(
        order: Iterable[str], deps: dict[str, tuple[str, ...]], compensable: Iterable[str]
    ) -> Graph:
        names = tuple(order)
        dependants: dict[str, list[str]] = {n: [] for n in names}
        for name in names:
            for dep in deps[name]:
                dependants[dep].append(name)
        return Graph(
            names, dict(deps), {k: tuple(v) for k, v in dependants.items()}, frozenset(compensable)
        )


@dataclass(frozen=True, slots=True)
class RunSteps:
    """Start these steps' actions (they are ready and not in flight)."""

    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BeginCompensation:
    """Switch a RUNNING saga to COMPENSATING. ``uncertain`` steps may have run before the executor
    died: they are recorded UNKNOWN so that they are compensated too."""

    uncertain: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CompensateSteps:
    """Run these compensations (all their dependants are already compensated)."""

    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Finish:
    """Record the final status."""

    status: SagaStatus


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing new to start: wait for a step in flight to finish."""


Command = RunSteps | BeginCompensation | CompensateSteps | Finish | Wait

# Step statuses whose effects may exist and so need undoing.
_NEEDS_UNDO = frozenset({StepStatus.COMPLETED, StepStatus.UNKNOWN})
_UNDONE = frozenset({StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED})


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


def all_completed(graph: Graph, state: SagaState) -> bool:
    steps = state.steps
    for name in graph.order:
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


def decide(
    graph: Graph,
    state: SagaState,
    in_flight: Collection[str] = (),
    *,
    recovering: bool = False,
    resume: bool = False,
) -> Command:
    """The next command for a saga in ``state``.

    ``recovering`` is set when the executor that ran the saga died: a RUNNING saga is then
    compensated (its possibly-started steps included) unless ``resume`` asks to go forward.
    """
    status = state.status
    if status.is_final:
        return Finish(status)
    if status in (SagaStatus.RUNNING, SagaStatus.PENDING):
        if all_completed(graph, state):
            return Finish(SagaStatus.COMPLETED)
        ready = ready_steps(graph, state, in_flight)
        if recovering and not resume:
            # The executor died: the steps it could have been running may have happened.
            return BeginCompensation(ready)
        if ready:
            return RunSteps(ready)
        if in_flight:
            return Wait()
        raise AssertionError(f"saga {state.saga_id} is RUNNING with nothing runnable: {state}")
    # COMPENSATING
    ready = compensation_ready(graph, state, in_flight)
    if ready:
        return CompensateSteps(ready)
    if in_flight:
        return Wait()
    return Finish(compensation_outcome(graph, state))
