"""A pure simulated world that runs the plan's commands, for the plan's replay tests.

It plays the executor without I/O: persisted state is a :class:`SagaState` that changes only at
"commits"; what is in flight and not yet committed lives in the run. A crash drops the run (the
plan's memory, the steps in flight) and keeps the persisted state, whose saga recovery then drives
through a fresh plan, exactly as :mod:`sagaz.engine.recovery` does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

from sagaz.engine import plan
from sagaz.engine.types import (
    FailureStrategy,
    SagaState,
    SagaStatus,
    Signal,
    StepState,
    StepStatus,
)


class Crashed(Exception):
    """The simulated process died after its k-th commit."""


@dataclass
class Behaviour:
    """How the world's steps behave. ``pick`` chooses which in-flight step ends next (an index
    into the sorted names), so schedules can be enumerated or drawn by hypothesis."""

    failing: frozenset[str] = frozenset()
    failing_compensations: frozenset[str] = frozenset()
    drains: frozenset[str] = frozenset()
    """Steps that complete even when cancelled (a thread that cannot be interrupted)."""
    pick: Callable[[int], int] = lambda n: 0


@dataclass
class Journal:
    """What really happened in the world, across crashes."""

    effects: dict[str, int] = field(default_factory=dict)
    """Action runs that had an effect, per step."""
    undone: list[str] = field(default_factory=list)
    """Compensations that ran, in order."""
    runs_after_crash: list[str] = field(default_factory=list)
    completed_at_crash: set[str] = field(default_factory=set)
    commands: list[str] = field(default_factory=list)


def graph_of(deps: dict[str, tuple[str, ...]], compensable: set[str] | None = None,
             waits: dict[str, plan.WaitSpec] | None = None) -> plan.Graph:
    waits = waits or {}
    if compensable is None:
        compensable = set(deps) - set(waits)
    return plan.Graph.build(list(deps), deps, compensable - set(waits), waits)


class World:
    def __init__(self, graph: plan.Graph, behaviour: Behaviour, *, crash_after: int | None = None,
                 lose_commit: bool = False, strategy: FailureStrategy = FailureStrategy.FAIL_FAST,
                 resume: bool = False):
        """``crash_after=k`` kills the process at its k-th commit: after it is durable, or (with
        ``lose_commit``) before, so the work that led to it (an action's effect) is not recorded."""
        self.graph = graph
        self.lose_commit = lose_commit
        self.behaviour = behaviour
        self.crash_after = crash_after
        self.commits = 0
        self.strategy = strategy
        self.resume = resume
        self.state = SagaState("s-1", "world", SagaStatus.RUNNING, {})
        self.journal = Journal()
        self.recovered = False
        self.now = 0.0
        self.resumes = 0
        self._unsaved = set()

    def __repr__(self) -> str:
        b = self.behaviour
        return (f"World(deps={self.graph.deps}, compensable={sorted(self.graph.compensable)}, "
                f"waits={self.graph.waits}, failing={sorted(b.failing)}, "
                f"failing_comp={sorted(b.failing_compensations)}, drains={sorted(b.drains)}, "
                f"crash_after={self.crash_after}, lose={self.lose_commit}, "
                f"strategy={self.strategy}, resume={self.resume}, recovered={self.recovered}, "
                f"commands={self.journal.commands}, effects={self.journal.effects}, "
                f"undone={self.journal.undone}, steps={self._statuses()}, "
                f"status={self.state.status})")

    def _statuses(self) -> dict[str, str]:
        return {n: s.status.value for n, s in self.state.steps.items()}

    def send(self, name: str) -> None:
        """A signal arrives (kept until a wait of its name consumes it)."""
        self.state.signals.append(Signal(f"sig-{len(self.state.signals)}-{name}", name, {}))

    # -- persisted state ---------------------------------------------------------------------

    _unsaved: set[str]

    def _commit(self, change: Callable[[SagaState], None]) -> None:
        self._unsaved.clear()  # reached waits ride along with every commit
        self.commits += 1
        crash = self.crash_after is not None and self.commits == self.crash_after
        if crash and self.lose_commit:
            raise Crashed
        change(self.state)
        if crash:
            raise Crashed

    def run(self, *, cancel_at: int | None = None, max_commands: int = 500,
            wait_for: float = 10_000.0) -> SagaState:
        """Run the saga; after a crash run recovery (at most once per crash point); a parked
        saga is resumed after ``wait_for`` seconds (its timers fire) a few times."""
        self._attempt(plan.SagaPlan(self.graph, self.strategy, 0.0, resume=self.resume),
                      cancel_at, max_commands)
        while self.state.status is SagaStatus.WAITING and self.resumes < 4:
            self.resumes += 1
            self.now += wait_for
            self._attempt(plan.SagaPlan(self.graph, self.strategy, 0.0, resume=self.resume),
                          None, max_commands)
        return self.state

    def _attempt(self, the_plan: plan.SagaPlan, cancel_at: int | None, max_commands: int) -> None:
        try:
            self._run(the_plan, cancel_at=cancel_at, max_commands=max_commands)
        except Crashed:
            self.crash_after = None
            self.recovered = True
            self.journal.completed_at_crash = {
                n for n, s in self.state.steps.items() if s.status is StepStatus.COMPLETED}
            # What was not committed is gone: reached waits kept only in memory too.
            self.state.steps = {n: s for n, s in self.state.steps.items() if n not in self._unsaved}
            self._unsaved.clear()
            if self.state.status is SagaStatus.WAITING:
                return  # parked: nobody held it; the next resume takes it
            if not self.state.status.is_final:
                recovery = plan.SagaPlan(self.graph, self.strategy, 0.0, recovering=True,
                                         resume=self.resume)
                self._run(recovery, cancel_at=None, max_commands=max_commands)

    def _run(self, the_plan: plan.SagaPlan, *, cancel_at: int | None, max_commands: int) -> None:
        in_flight: dict[str, str] = {}  # name -> "action" | "compensation"
        pending: dict[str, StepState] = {}
        cancelled: set[str] = set()
        for count in range(max_commands):
            if count == cancel_at:
                the_plan.request_cancel("operator")
            command = the_plan.next(self.state, in_flight, None, self.now)
            self.journal.commands.append(type(command).__name__)
            if isinstance(command, plan.RunSteps):
                assert not set(command.names) & set(in_flight), command
                for name in command.names:
                    assert self.state.step_status(name) is StepStatus.PENDING, name
                    if self.recovered:
                        self.journal.runs_after_crash.append(name)
                    in_flight[name] = "action"
            elif isinstance(command, plan.CompensateSteps):
                for name in command.names:
                    in_flight[name] = "compensation"
            elif isinstance(command, plan.CancelSteps):
                cancelled.update(command.names)
            elif isinstance(command, plan.ReachWaits):
                for name in command.names:
                    self.state.steps[name] = StepState(name, StepStatus.PENDING,
                                                       started_at=self.now)
                    self._unsaved.add(name)
            elif isinstance(command, plan.ResolveWait):
                self._resolve(the_plan, command, pending)
            elif isinstance(command, plan.Park):
                assert not in_flight
                self._commit(lambda state: setattr(state, "status", SagaStatus.WAITING))
                return
            elif isinstance(command, plan.AwaitSteps):
                assert in_flight, "AwaitSteps with nothing in flight"
                if command.every:
                    the_plan.grace_ended()
                    continue
                names = sorted(in_flight)
                name = names[self.behaviour.pick(len(names)) % len(names)]
                self._end(the_plan, name, in_flight.pop(name), name in cancelled, pending)
            elif isinstance(command, plan.BeginCompensation):
                assert not in_flight
                steps = [*pending.values()]
                for name in command.uncertain:
                    steps.append(StepState(name, StepStatus.UNKNOWN))

                def begin(state: SagaState, steps: list[StepState] = steps,
                          command: plan.BeginCompensation = command) -> None:
                    for step in steps:
                        state.steps[step.name] = step
                    state.status = SagaStatus.COMPENSATING
                    state.failed_step = command.failed_step
                    state.error = command.why.value

                self._commit(begin)
                pending.clear()
            else:
                assert not in_flight
                if command.record:
                    status = command.status
                    self._commit(lambda state, status=status: setattr(state, "status", status))
                return
        raise AssertionError(f"no end after {max_commands} commands: {self.journal.commands}")

    def _resolve(self, the_plan: plan.SagaPlan, command: plan.ResolveWait,
                 pending: dict[str, StepState]) -> None:
        name, signal = command.name, command.signal
        if signal is None and command.on_timeout is None:
            pending[name] = StepState(name, StepStatus.FAILED)
            the_plan.step_ended(name, StepStatus.FAILED)
            return
        completes = the_plan.completes_saga(self.state, name)

        def complete(state: SagaState) -> None:
            state.steps[name] = StepState(name, StepStatus.COMPLETED)
            state.signals = [s for s in state.signals if s is not signal]
            state.status = SagaStatus.COMPLETED if completes else SagaStatus.RUNNING

        self._commit(complete)

    def _end(self, the_plan: plan.SagaPlan, name: str, kind: str, cancelled: bool,
             pending: dict[str, StepState]) -> None:
        b = self.behaviour
        if kind == "compensation":
            self.journal.undone.append(name)
            status = (StepStatus.COMPENSATION_FAILED if name in b.failing_compensations
                      else StepStatus.COMPENSATED)
            self._commit(lambda state: state.steps.__setitem__(name, StepState(name, status)))
            return
        if cancelled and name not in b.drains:
            status = the_plan.ended_as(name, StepStatus.CANCELLED)
            pending[name] = StepState(name, status)
            the_plan.step_ended(name, status)
            return
        if name in b.failing:
            status = the_plan.ended_as(name, StepStatus.FAILED)
            pending[name] = StepState(name, status)
            the_plan.step_ended(name, status)
            return
        self.journal.effects[name] = self.journal.effects.get(name, 0) + 1
        completes = the_plan.completes_saga(self.state, name)

        def complete(state: SagaState) -> None:
            state.steps[name] = StepState(name, StepStatus.COMPLETED)
            if completes:
                state.status = SagaStatus.COMPLETED

        self._commit(complete)


def check_invariants(world: World) -> None:
    """What must hold whatever happened."""
    graph, state, journal = world.graph, world.state, world.journal
    if state.status is SagaStatus.WAITING:
        # Parked only on waits whose signal has not come and whose timer (if any) is ahead.
        open_waits = [n for n in plan.ready_steps(graph, state) if n in graph.waits]
        assert open_waits, (state, journal.commands)
        for name in open_waits:
            spec, reached = graph.waits[name], state.steps[name].started_at
            assert reached is not None
            assert spec.timeout is None or reached + spec.timeout > world.now, (name, state)
            assert all(s.name != spec.signal for s in state.signals), (name, state)
        return
    assert state.status.is_final, f"saga not terminal: {state.status} {journal.commands}"
    # No step compensated before its dependants that had effects.
    seen: set[str] = set()
    for name in journal.undone:
        for dependant in graph.dependants[name]:
            if dependant in graph.compensable and journal.effects.get(dependant):
                assert dependant in seen, (
                    f"{name} compensated before its dependant {dependant}: {journal.undone}")
        seen.add(name)
    if state.status is SagaStatus.COMPENSATED:
        for name, count in journal.effects.items():
            if count and name in graph.compensable:
                assert name in seen, f"{name} had an effect and was not compensated"
        for name in graph.compensable:
            assert state.step_status(name) not in (StepStatus.COMPLETED, StepStatus.UNKNOWN), (
                f"{name} left {state.step_status(name)} in a COMPENSATED saga")
    if state.status is SagaStatus.COMPLETED:
        assert all(state.step_status(n) is StepStatus.COMPLETED for n in graph.order)
        assert not journal.undone
    # Recovery never runs again a step that had completed before the crash.
    assert not set(journal.runs_after_crash) & journal.completed_at_crash
    # Without a crash no action runs twice.
    if not world.recovered:
        assert all(count <= 1 for count in journal.effects.values()), journal.effects


def copy_state(state: SagaState) -> SagaState:
    return copy.deepcopy(state)
