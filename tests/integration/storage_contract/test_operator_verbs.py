"""Operator verbs on every storage (one body each), raced against real executors.

The executor is a real ``Saga.execute`` running concurrently in this process on the real storage;
the verb uses its own lease owner, as a CLI process would, so lease fencing is what keeps them
apart.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from effects_file import read_lines
from storage_contract import Backend
from versioned_sagas import V1_STEPS, build, forget, set_pausing, v1, v2

import sagaz
from sagaz import OperatorError, RetryPolicy, Saga, SagaContext, SagaStatus, StepStatus
from sagaz.engine.fingerprint import fingerprint_of
from sagaz.engine.types import SagaState

LEASE = 1.0
VERB_LEASE = 8.0
STEPS = ("s1", "s2", "s3", "s4")
FAST = RetryPolicy(base_delay=0.001, max_delay=0.002)


def slow_saga(name: str, effects: list[tuple[str, str]], delay: float) -> Saga:
    """s1 -> s2 -> s3 -> s4, each action taking ``delay`` seconds; every call is recorded."""
    saga = Saga(name=name, retry_policy=FAST)
    for step in STEPS:
        async def act(ctx: SagaContext, step: str = step) -> None:
            effects.append(("action", step))
            await asyncio.sleep(delay)

        async def undo(ctx: SagaContext, step: str = step) -> None:
            effects.append(("compensate", step))

        saga.add_step(step, act, undo)
    return saga


async def until(check: Callable[[], Awaitable[bool]], what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def load(backend: Backend, saga_id: str) -> SagaState:
    state = await backend.storage.load(saga_id)
    assert state is not None
    return state


def completed(backend: Backend, saga_id: str, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        state = await backend.storage.load(saga_id)
        return state is not None and sum(
            s.status is StepStatus.COMPLETED for s in state.steps.values()) >= count

    return check


@pytest.mark.parametrize("after_steps", [0, 2])
async def test_cancel_fences_a_running_executor_which_stops_at_its_next_step_boundary(
    storage_backend: Backend, after_steps: int
) -> None:
    storage_backend.config(lease_seconds=VERB_LEASE)
    effects: list[tuple[str, str]] = []
    saga = slow_saga(f"cancelled-{uuid.uuid4().hex[:8]}", effects, delay=0.15)
    saga_id = str(uuid.uuid4())
    run = asyncio.create_task(saga.execute({}, saga_id=saga_id))
    await until(completed(storage_backend, saga_id, after_steps), f"{after_steps} steps")
    acted_before = sum(kind == "action" for kind, _ in effects)

    started = time.monotonic()
    outcome = await sagaz.cancel(saga_id, reason="customer asked", actor="alice")
    took = time.monotonic() - started
    result = await asyncio.wait_for(run, 10)
    # The fenced executor says it stopped at its step boundary: the cancel does not wait its
    # lease out (generous slack: the step in flight takes 0.15 s, the lease VERB_LEASE).
    assert took < VERB_LEASE / 2

    assert outcome.status is SagaStatus.COMPENSATED
    assert result.status is SagaStatus.COMPENSATED, "the executor's caller gets the outcome"
    acted = [step for kind, step in effects if kind == "action"]
    assert acted == list(STEPS[:len(acted)])
    assert len(acted) <= acted_before + 1, "at most the step in flight finished, none started"
    assert "s4" not in acted
    undone = [step for kind, step in effects if kind == "compensate"]
    assert set(acted) <= set(undone), "every action that ran is compensated"
    assert undone == sorted(undone, key=STEPS.index, reverse=True), "dependants first"
    state = await load(storage_backend, saga_id)
    assert state.status is SagaStatus.COMPENSATED
    assert state.cancel_requested is not None
    assert (state.cancel_requested["actor"], state.cancel_requested["reason"]) == (
        "alice", "customer asked")
    assert state.error == "cancelled: customer asked (by alice)"
    assert state.lease_owner is None
    history = await storage_backend.storage.get_history(saga_id)
    events = [e.event for e in history]
    assert events.index("cancel_requested") < events.index("saga_compensating")
    assert events[-1] == "saga_compensated"
    request = next(e for e in history if e.event == "cancel_requested")
    assert request.details == {"actor": "alice", "reason": "customer asked"}


async def test_cancel_refuses_a_finished_saga_and_an_unknown_id(storage_backend: Backend) -> None:
    storage_backend.config(lease_seconds=LEASE)
    effects: list[tuple[str, str]] = []
    saga = slow_saga(f"done-{uuid.uuid4().hex[:8]}", effects, delay=0)
    result = await saga.execute({})
    with pytest.raises(OperatorError, match="it is COMPLETED"):
        await sagaz.cancel(result.saga_id)
    with pytest.raises(sagaz.SagaNotFoundError):
        await sagaz.cancel(str(uuid.uuid4()))
    assert [e.event for e in await storage_backend.storage.get_history(result.saga_id)] == [
        "saga_completed"], "a refused verb records nothing"


async def test_a_cancel_recorded_without_the_definition_is_honoured_by_recovery(
    storage_backend: Backend, tmp_path: Path
) -> None:
    """The saga's executor died; the verb's process lacks the definition: the request is
    recorded and the saga handed to recovery, which compensates it."""
    storage_backend.config(lease_seconds=LEASE)
    name = f"handed-{uuid.uuid4().hex[:8]}"
    saga_id = await abandoned_v1_saga(storage_backend, tmp_path, name, "after-action:charge")
    outcome = await sagaz.cancel(saga_id, reason="fraud", actor="bob")
    assert outcome.status is SagaStatus.RUNNING
    assert "not compensated here" in outcome.message
    state = await load(storage_backend, saga_id)
    assert state.cancel_requested is not None and state.lease_expires_at is not None
    await asyncio.sleep(max(0.0, state.lease_expires_at - time.time()) + 0.02)
    report = await sagaz.recover(sagas=[v1(name)])
    assert report.finished == {saga_id: SagaStatus.COMPENSATED}
    done = await load(storage_backend, saga_id)
    assert done.error == "cancelled: fraud (by bob)"
    # charge's effect happened before the death (its commit did not): compensated too.
    lines = [line.split(" ", 1)[1] for line in read_lines(tmp_path / "effects.log")]
    assert lines == ["action reserve", "action charge", "compensate charge",
                     "compensate reserve"]


async def abandoned_v1_saga(backend: Backend, tmp_path: Path, name: str, pause: str) -> str:
    """A v1 saga whose executor stopped for good at ``pause`` (its task abandoned: it commits
    nothing more, like a dead process), with v1 no longer registered. Returns its id once its
    lease has run out."""
    saga_id = str(uuid.uuid4())
    marker = tmp_path / "marker"
    set_pausing(True)
    task = asyncio.create_task(v1(name).execute(
        {"effects": str(tmp_path / "effects.log"), "marker": str(marker), "pause_at": pause},
        saga_id=saga_id))
    try:
        await until(lambda: asyncio.sleep(0, bool(read_lines(marker))), "the pause")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        set_pausing(False)
    forget(name)
    state = await load(backend, saga_id)
    assert state.lease_expires_at is not None
    await asyncio.sleep(max(0.0, state.lease_expires_at - time.time()) + 0.02)
    return saga_id


def failing_compensation_saga(name: str, calls: list[str], broken: dict[str, bool]) -> Saga:
    """a -> b -> c; c fails, so b then a are compensated; b's compensation fails while
    ``broken["b"]``."""
    saga = Saga(name=name, retry_policy=FAST)

    async def ok(ctx: SagaContext) -> None:
        return None

    async def fail(ctx: SagaContext) -> None:
        raise RuntimeError("c fails")

    def undo(step: str) -> Any:
        async def run(ctx: SagaContext) -> None:
            calls.append(step)
            if broken.get(step):
                raise ConnectionError(f"cannot undo {step}")

        return run

    saga.add_step("a", ok, undo("a"))
    saga.add_step("b", ok, undo("b"))
    saga.add_step("c", fail, undo("c"))
    return saga


async def test_retry_reruns_the_failed_compensations_and_two_racing_retries_run_it_once(
    storage_backend: Backend,
) -> None:
    storage_backend.config(lease_seconds=LEASE)
    calls: list[str] = []
    broken = {"b": True}
    saga = failing_compensation_saga(f"retried-{uuid.uuid4().hex[:8]}", calls, broken)
    sagaz.register(saga)
    first = await saga.execute({})
    assert first.status is SagaStatus.FAILED
    assert calls == ["b", "a"]
    with pytest.raises(sagaz.SagaNotFoundError):
        await sagaz.retry(str(uuid.uuid4()))
    broken["b"] = False

    outcomes = await asyncio.gather(
        sagaz.retry(first.saga_id, actor="bob", reason="bank is back"),
        sagaz.retry(first.saga_id, actor="carol"), return_exceptions=True)

    wins = [o for o in outcomes if not isinstance(o, BaseException)]
    losses = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(wins) == 1 and len(losses) == 1, outcomes
    assert isinstance(losses[0], OperatorError)
    assert wins[0].status is SagaStatus.COMPENSATED
    assert calls == ["b", "a", "b"], "only the compensation that failed runs again"
    state = await load(storage_backend, first.saga_id)
    assert state.status is SagaStatus.COMPENSATED
    assert state.steps["b"].status is StepStatus.COMPENSATED
    history = await storage_backend.storage.get_history(first.saga_id)
    retries = [e for e in history if e.event == "retry_requested"]
    assert len(retries) == 1
    assert retries[0].details["actor"] in ("bob", "carol")
    assert [e.event for e in history][-1] == "saga_compensated"
    with pytest.raises(OperatorError, match="it is COMPENSATED"):
        await sagaz.retry(first.saga_id)


async def test_resume_migrates_a_stuck_saga_to_the_named_definition(
    storage_backend: Backend, tmp_path: Path
) -> None:
    storage_backend.config(lease_seconds=LEASE)
    name = f"migrated-{uuid.uuid4().hex[:8]}"
    for sub in ("one", "two"):
        (tmp_path / sub).mkdir()
    in_charge = await abandoned_v1_saga(storage_backend, tmp_path / "one", name,
                                        "before-action:charge")
    shipped = await abandoned_v1_saga(storage_backend, tmp_path / "two", name, "after-action:ship")
    new = v2(name)
    sagaz.register(new)
    report = await sagaz.recover()
    assert set(report.stuck) == {in_charge, shipped}

    with pytest.raises(OperatorError, match="lacks step"):
        await sagaz.resume(shipped, "2", actor="dave")  # charge completed: v2 cannot undo it
    with pytest.raises(OperatorError, match="no registered definition"):
        await sagaz.resume(in_charge, "7", actor="dave")

    with pytest.raises(OperatorError, match="charge may have been running"):
        await sagaz.resume(in_charge, "2", actor="dave")
    outcome = await sagaz.resume(in_charge, "2", reason="v1 retired", actor="dave", force=True)
    assert outcome.status is SagaStatus.COMPLETED
    state = await load(storage_backend, in_charge)
    assert state.definition_fingerprint == fingerprint_of(new)
    assert state.definition_version == "2"
    assert set(state.steps) == {"reserve", "charge_card", "notify"}
    history = await storage_backend.storage.get_history(in_charge)
    resumed = next(e for e in history if e.event == "resume_requested")
    assert resumed.details == {
        "actor": "dave", "reason": "v1 retired", "from_fingerprint": fingerprint_of(v1(name)),
        "from_version": "1", "to_fingerprint": fingerprint_of(new), "to_version": "2",
        "abandoned": ["charge"]}
    forget(name)


async def test_resume_is_refused_while_a_live_executor_holds_the_saga(
    storage_backend: Backend,
) -> None:
    storage_backend.config(lease_seconds=LEASE)
    effects: list[tuple[str, str]] = []
    saga = slow_saga(f"live-{uuid.uuid4().hex[:8]}", effects, delay=0.1)
    sagaz.register(saga)
    saga_id = str(uuid.uuid4())
    run = asyncio.create_task(saga.execute({}, saga_id=saga_id))
    await until(completed(storage_backend, saga_id, 1), "a step")
    with pytest.raises(OperatorError, match="holds its lease"):
        await sagaz.resume(saga_id, fingerprint_of(saga), actor="eve")
    result = await run
    assert result.status is SagaStatus.COMPLETED, "the refused verb changed nothing"
    assert "resume_requested" not in [e.event for e in
                                      await storage_backend.storage.get_history(saga_id)]


@pytest.mark.parametrize("first", ["cancel", "recovery"])
async def test_cancel_racing_recovery_compensates_once(
    storage_backend: Backend, tmp_path: Path, first: str
) -> None:
    """The saga's executor died; a worker's recovery and an operator's cancel go at it at once:
    whichever gets the lease drives it (the other is fenced or refused), the saga is compensated
    and every compensation runs once (recovery compensates this saga: recovery="compensate",
    which is not part of the fingerprint)."""
    storage_backend.config(lease_seconds=LEASE)
    name = f"raced-{uuid.uuid4().hex[:8]}"
    saga_id = await abandoned_v1_saga(storage_backend, tmp_path, name, "after-action:charge")
    definition = build(name, "1", V1_STEPS, recovery="compensate")
    verb = sagaz.cancel(saga_id, reason="raced", actor="fay", sagas=[definition])
    worker = sagaz.recover(sagas=[definition])
    both = [verb, worker] if first == "cancel" else [worker, verb]
    outcomes = await asyncio.gather(*both, return_exceptions=True)

    state = await load(storage_backend, saga_id)
    assert state.status is SagaStatus.COMPENSATED, outcomes
    lines = [line.split(" ", 1)[1] for line in read_lines(tmp_path / "effects.log")]
    assert lines == ["action reserve", "action charge", "compensate charge",
                     "compensate reserve"], "each compensation once, no action again"
    cancelled = [o for o in outcomes if isinstance(o, sagaz.engine.operator.VerbOutcome)]
    refused = [o for o in outcomes if isinstance(o, OperatorError)]
    assert len(cancelled) + len(refused) == 1, outcomes
    if cancelled:
        # The cancel got in: whoever compensated honoured it.
        assert state.error == "cancelled: raced (by fay)"
    else:
        assert "COMPENSATING" in str(refused[0]) or "COMPENSATED" in str(refused[0])


async def test_a_definition_declared_compatible_finishes_a_saga_of_the_old_version(
    storage_backend: Backend, tmp_path: Path
) -> None:
    storage_backend.config(lease_seconds=LEASE)
    name = f"compatible-{uuid.uuid4().hex[:8]}"
    saga_id = await abandoned_v1_saga(storage_backend, tmp_path, name, "before-action:ship")
    # v3 keeps every step v1 sagas may have started, with their compensations, and adds one.
    v3 = build(name, "3", (*V1_STEPS, "notify"), compatible_with=["1"])
    report = await sagaz.recover(sagas=[v3])
    assert report.finished == {saga_id: SagaStatus.COMPLETED}, report
    lines = [line.split(" ", 1)[1] for line in read_lines(tmp_path / "effects.log")]
    assert lines == ["action reserve", "action charge", "action ship", "action notify"]
    state = await load(storage_backend, saga_id)
    assert state.definition_version == "1", "the saga still says what it started with"
