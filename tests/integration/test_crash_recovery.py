"""Crash recovery with real process death.

A child process runs a 3-step saga (steps a, b, c, each with a compensation) on a SQLite file and
is SIGKILLed at one step boundary: before an action, after an action's effect but before its
commit, after its commit; and the same three points inside compensation. This process then waits
for the dead executor's lease to expire and calls ``sagaz.recover()``. Whatever the boundary:

* every saga ends COMPLETED or COMPENSATED;
* in a COMPENSATED saga, every action that ran (per the effects file) was compensated, and the
  only step compensated without its action having run is the one that "may have happened";
* a ``recovery="resume"`` saga ends COMPLETED with every action run, and only an action whose
  effect happened but whose commit did not may run twice;
* without a crash every action runs exactly once.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from crash_sagas import MARKER_ENV, PAUSE_ENV, SAGAS, STEPS
from effects_file import read_lines
from killed_child import child_env as child_environment
from killed_child import sigkill_child_once_paused

import sagaz
from sagaz import SagaConfig, SagaStatus, StepStatus
from sagaz.engine.types import SagaState
from sagaz.storage.sqlite import SQLiteSagaStorage

CHILD = Path(__file__).with_name("crash_child.py")
LEASE_SECONDS = 0.5
CHILD_DEADLINE = 5.0
WHENS = ("before", "after", "committed")
COMPENSATION_ORDER = ("b", "a")  # step c fails, so b then a are compensated


@dataclass(frozen=True)
class Boundary:
    """Where the child is killed: ``when`` in WHENS, ``phase`` action or compensation."""

    when: str
    phase: str
    step: str

    @property
    def point(self) -> str:
        return f"{self.when}-{self.phase}:{self.step}"

    @property
    def fail_step(self) -> str | None:
        """Compensation boundaries need a saga that compensates: its step c fails."""
        return "c" if self.phase == "compensation" else None

    @property
    def uncertain_step(self) -> str | None:
        """The step recovery must treat as "may have happened": the one in flight, or the one
        about to start."""
        if self.phase == "compensation":
            return None
        index = STEPS.index(self.step)
        if self.when != "committed":
            return self.step
        return STEPS[index + 1] if index + 1 < len(STEPS) else None

    def state_at_crash(self) -> tuple[SagaStatus, dict[str, StepStatus]]:
        """What the database must show right after the kill: proves where the child died."""
        if self.phase == "action":
            index = STEPS.index(self.step) + (1 if self.when == "committed" else 0)
            # The last step's completion commits together with the saga's final status.
            status = SagaStatus.COMPLETED if index == len(STEPS) else SagaStatus.RUNNING
            return status, dict.fromkeys(STEPS[:index], StepStatus.COMPLETED)
        steps = {"a": StepStatus.COMPLETED, "b": StepStatus.COMPLETED, "c": StepStatus.FAILED}
        for step in COMPENSATION_ORDER:
            if step != self.step or self.when == "committed":
                steps[step] = StepStatus.COMPENSATED
            if step == self.step:
                break
        return SagaStatus.COMPENSATING, steps


FORWARD = [Boundary(when, "action", step) for step in STEPS for when in WHENS]
COMPENSATION = [Boundary(when, "compensation", step)
                for step in COMPENSATION_ORDER for when in WHENS]


@dataclass
class Crash:
    db: Path
    effects: Path
    saga_id: str


def child_env(db: Path, **extra: str) -> dict[str, str]:
    return child_environment(SAGAZ_STORAGE_URL=f"sqlite:///{db}",
                             SAGAZ_LEASE_SECONDS=str(LEASE_SECONDS), **extra)


def child_args(mode: str, crash: Crash, fail_step: str | None) -> list[str]:
    args = [sys.executable, str(CHILD), mode, crash.saga_id, str(crash.effects)]
    return [*args, "--fail-step", fail_step] if fail_step else args


def new_crash(tmp_path: Path) -> Crash:
    return Crash(tmp_path / "sagas.db", tmp_path / "effects.log", str(uuid.uuid4()))


def kill_child_at(boundary: Boundary, mode: str, tmp_path: Path) -> Crash:
    """Run the saga in a child process and SIGKILL it the moment it reaches ``boundary``."""
    crash = new_crash(tmp_path)
    marker = tmp_path / "marker"
    stderr_path = tmp_path / "child.stderr"
    env = child_env(crash.db, **{PAUSE_ENV: boundary.point, MARKER_ENV: str(marker)})
    sigkill_child_once_paused(child_args(mode, crash, boundary.fail_step), env, stderr_path,
                              paused=lambda: read_lines(marker) == [boundary.point],
                              waiting_for=boundary.point, within=CHILD_DEADLINE, poll=0.005)
    return crash


def step_statuses(state: SagaState) -> dict[str, StepStatus]:
    return {name: step.status for name, step in state.steps.items()
            if step.status is not StepStatus.PENDING}


async def wait_for_lease_expiry(state: SagaState) -> None:
    """The dead executor's lease runs out on its own; recovery may only claim it after that.
    (A saga that ended before the kill holds no lease.)"""
    if state.status.is_final:
        assert state.lease_expires_at is None
        return
    assert state.lease_expires_at is not None
    await asyncio.sleep(max(0.0, state.lease_expires_at - time.time()) + 0.01)


async def recover_crash(
    crash: Crash, mode: str, use_config: Callable[..., SagaConfig]
) -> tuple[SagaState, SagaState]:
    """Recover in this process; returns the saga as the crash left it and as recovery left it."""
    storage = SQLiteSagaStorage(crash.db)
    use_config(storage=storage, lease_seconds=LEASE_SECONDS)
    crashed = await storage.load(crash.saga_id)
    assert crashed is not None
    await wait_for_lease_expiry(crashed)
    report = await sagaz.recover(sagas=[SAGAS[mode]])
    recovered = await storage.load(crash.saga_id)
    assert recovered is not None
    assert report.errors == {}
    # A saga that had ended before the kill has nothing left to recover.
    expected = {} if crashed.status.is_final else {crash.saga_id: recovered.status}
    assert report.finished == expected
    assert recovered.lease_owner is None, "a finished saga keeps no lease"
    again = await sagaz.recover(sagas=[SAGAS[mode]])
    assert again.finished == {}, "a recovered saga must not be recovered twice"
    return crashed, recovered


@pytest.mark.slow
@pytest.mark.parametrize("boundary", FORWARD + COMPENSATION, ids=lambda b: b.point)
async def test_compensating_saga_killed_at_a_boundary_is_finished_by_recovery(
    boundary: Boundary, tmp_path: Path, use_config: Callable[..., SagaConfig]
) -> None:
    """After SIGKILL at ``boundary``, recovery of a compensate-mode saga ends it COMPLETED (only if
    every step had committed) or COMPENSATED with every action that ran compensated; it never runs
    an action itself."""
    crash = kill_child_at(boundary, "compensate", tmp_path)
    effects_at_crash = read_lines(crash.effects)
    crashed, recovered = await recover_crash(crash, "compensate", use_config)
    assert (crashed.status, step_statuses(crashed)) == boundary.state_at_crash()

    effects = read_lines(crash.effects)
    actions = [line for line in effects if line.startswith("action ")]
    assert actions == [line for line in effects_at_crash if line.startswith("action ")], \
        "compensate-mode recovery must not run actions"
    acted = {line.split()[1] for line in actions}
    compensated = {line.split()[1] for line in effects if line.startswith("compensate ")}

    assert recovered.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED)
    if boundary.point == "committed-action:c":
        # Every step had committed: nothing is left to decide, the saga completed.
        assert recovered.status is SagaStatus.COMPLETED
        assert effects == ["action a", "action b", "action c"]
        return
    assert recovered.status is SagaStatus.COMPENSATED
    assert acted <= compensated, f"actions {acted - compensated} ran but were not compensated"
    may_have_happened = {boundary.uncertain_step} - {None}
    assert compensated - acted <= may_have_happened, \
        f"compensated {compensated - acted}, whose actions never started"
    leftovers = {name: status for name, status in step_statuses(recovered).items()
                 if status in (StepStatus.COMPLETED, StepStatus.UNKNOWN)}
    assert leftovers == {}, "a COMPENSATED saga has steps that still need undoing"


@pytest.mark.slow
@pytest.mark.parametrize("boundary", FORWARD, ids=lambda b: b.point)
async def test_resuming_saga_killed_at_a_boundary_is_completed_by_recovery(
    boundary: Boundary, tmp_path: Path, use_config: Callable[..., SagaConfig]
) -> None:
    """After SIGKILL at ``boundary``, recovery of a ``recovery="resume"`` saga runs the remaining
    steps: it ends COMPLETED, every action ran, none was compensated, and only the action whose
    effect happened but whose completion was not committed ran twice."""
    crash = kill_child_at(boundary, "resume", tmp_path)
    crashed, recovered = await recover_crash(crash, "resume", use_config)
    assert (crashed.status, step_statuses(crashed)) == boundary.state_at_crash()

    effects = read_lines(crash.effects)
    assert recovered.status is SagaStatus.COMPLETED
    assert step_statuses(recovered) == dict.fromkeys(STEPS, StepStatus.COMPLETED)
    assert recovered.context == {"effects": str(crash.effects),
                                 "a_done": True, "b_done": True, "c_done": True}
    assert not [line for line in effects if line.startswith("compensate ")]
    runs = Counter(line.split()[1] for line in effects)
    repeatable = boundary.step if boundary.when == "after" else None
    expected = {step: 2 if step == repeatable else 1 for step in STEPS}
    assert runs == expected


@pytest.mark.parametrize(("fail_step", "status", "expected_effects"), [
    (None, SagaStatus.COMPLETED, ["action a", "action b", "action c"]),
    ("c", SagaStatus.COMPENSATED, ["action a", "action b", "compensate b", "compensate a"]),
])
def test_child_without_a_crash_runs_each_step_once(
    tmp_path: Path, fail_step: str | None, status: SagaStatus, expected_effects: list[str]
) -> None:
    """Control run: the same child, not killed, runs every action (and compensation) exactly once
    and needs no recovery."""
    crash = new_crash(tmp_path)
    done = subprocess.run(child_args("compensate", crash, fail_step), env=child_env(crash.db),
                          capture_output=True, text=True, timeout=CHILD_DEADLINE, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == status.value
    assert read_lines(crash.effects) == expected_effects
