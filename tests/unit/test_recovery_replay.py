"""Replay crashes at every commit boundary through the real executor and recovery.

A storage that "dies" (raises a BaseException, as a killed process would stop) before its k-th
commit leaves exactly the state a crash between two commits leaves. Recovery must then finish
every saga, and never leave a step whose action ran without its compensation in a COMPENSATED saga.
"""

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sagaz
from sagaz import RetryPolicy, Saga, SagaConfig, SagaStatus
from sagaz.storage.base import UnitOfWork
from sagaz.storage.memory import InMemorySagaStorage


class ProcessDied(BaseException):
    """Stands for SIGKILL: nothing after it runs in the dying executor."""


class DyingStorage(InMemorySagaStorage):
    def __init__(self, commits_before_death: int):
        super().__init__()
        self.left = commits_before_death

    async def commit(self, work: UnitOfWork, lease_seconds: float) -> None:
        if self.left == 0:
            raise ProcessDied
        self.left -= 1
        await super().commit(work, lease_seconds)


@st.composite
def saga_shapes(draw: Any) -> tuple[list[list[int]], int | None, bool]:
    n = draw(st.integers(min_value=1, max_value=5))
    deps = [sorted(draw(st.sets(st.integers(0, i - 1), max_size=2))) if i else [] for i in range(n)]
    failing = draw(st.one_of(st.none(), st.integers(0, n - 1)))
    resume = draw(st.booleans())
    return deps, failing, resume


def build(deps: list[list[int]], failing: int | None, resume: bool,
          effects: dict[str, int], undone: dict[str, int]) -> Saga:
    saga = Saga(name="replay", recovery="resume" if resume else "compensate",
                retry_policy=RetryPolicy(base_delay=0, max_delay=0))

    def act(name: str) -> Any:
        async def fn(ctx: Any) -> dict[str, Any]:
            if failing is not None and name == f"s{failing}":
                raise RuntimeError("step failed")
            effects[name] = effects.get(name, 0) + 1
            return {name: True}
        return fn

    def undo(name: str) -> Any:
        async def fn(ctx: Any) -> None:
            undone[name] = undone.get(name, 0) + 1
        return fn

    for i, d in enumerate(deps):
        saga.add_step(f"s{i}", act(f"s{i}"), undo(f"s{i}"), depends_on=[f"s{j}" for j in d])
    return saga


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=saga_shapes(), crash_at=st.integers(min_value=0, max_value=12))
async def test_recovery_after_a_crash_at_any_commit(
    shape: tuple[list[list[int]], int | None, bool], crash_at: int
) -> None:
    deps, failing, resume = shape
    effects: dict[str, int] = {}
    undone: dict[str, int] = {}
    storage = DyingStorage(crash_at)
    saga = build(deps, failing, resume, effects, undone)
    config = SagaConfig(storage=storage, lease_seconds=30)
    saga.config = config
    try:
        result = await saga.execute({})
        crashed = False
    except ProcessDied:
        crashed = True
    if not crashed:
        final = result.status
    else:
        storage.left = 10**6  # the storage itself survives; only the executor died
        [saga_id] = list(storage._sagas)
        storage._sagas[saga_id].lease_expires_at = 0.0  # the dead executor's lease ran out
        report = await sagaz.recover(config, sagas=[saga])
        assert not report.errors and not report.unknown_definitions
        final = report.finished[saga_id]
    assert final in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED)
    stored = await storage.load(next(iter(storage._sagas)))
    assert stored is not None and stored.status is final and stored.lease_owner is None
    names = [f"s{i}" for i in range(len(deps))]
    if final is SagaStatus.COMPENSATED:
        for name in names:
            if effects.get(name):
                assert undone.get(name), f"{name} ran but was never compensated"
    else:
        assert all(effects.get(n) for n in names)
        assert not undone
        if not crashed:
            assert all(effects[n] == 1 for n in names)
    if failing is None and not crashed:
        assert final is SagaStatus.COMPLETED
    if failing is None and resume:
        assert final is SagaStatus.COMPLETED


@pytest.mark.parametrize("resume", [False, True])
async def test_recovery_of_a_saga_dead_after_its_first_step(resume: bool) -> None:
    effects: dict[str, int] = {}
    undone: dict[str, int] = {}
    storage = DyingStorage(1)  # create does not count: step s0 commits, s1's commit dies
    saga = build([[], [0], [1]], None, resume, effects, undone)
    config = SagaConfig(storage=storage)
    saga.config = config
    with pytest.raises(ProcessDied):
        await saga.run({})
    storage.left = 10**6
    report = await sagaz.recover(config, sagas=[saga])
    assert report.finished == {}  # the lease has not expired yet: nothing to take over
    [saga_id] = list(storage._sagas)
    storage._sagas[saga_id].lease_expires_at = 0.0
    report = await sagaz.recover(config, sagas=[saga])
    if resume:
        assert report.finished == {saga_id: SagaStatus.COMPLETED}
        assert effects == {"s0": 1, "s1": 2, "s2": 1}  # s1 may have run: it runs again
    else:
        assert report.finished == {saga_id: SagaStatus.COMPENSATED}
        # s1 ran but its completion was never recorded: "may have happened", so undone too.
        assert undone == {"s0": 1, "s1": 1}
        stored = await storage.load(saga_id)
        assert stored is not None
        assert stored.steps["s1"].status is sagaz.StepStatus.COMPENSATED
        assert "s2" not in stored.steps


async def test_recovery_reports_unknown_definitions() -> None:
    storage = InMemorySagaStorage()
    config = SagaConfig(storage=storage)
    state = sagaz.engine.types.SagaState(  # type: ignore[attr-defined]
        "6f1c0a52-3b7e-4f8e-9d0a-1b2c3d4e5f60", "nobody-defines-me", SagaStatus.RUNNING, {},
        lease_owner="dead")
    await storage.create(state, 0.0)
    storage._sagas[state.saga_id].lease_expires_at = 0.0
    report = await sagaz.recover(config)
    assert report.unknown_definitions == {state.saga_id: "nobody-defines-me"}


async def test_a_fenced_out_executor_cannot_overwrite_a_recovered_saga() -> None:
    """An executor that was paused past its lease loses the saga to recovery; its late writes
    are refused and its caller gets the recovered outcome."""
    import asyncio

    storage = InMemorySagaStorage()
    config = SagaConfig(storage=storage)
    gate = asyncio.Event()
    undone: list[str] = []

    async def paused(ctx: Any) -> None:
        await gate.wait()

    async def undo(ctx: Any) -> None:
        undone.append("a")

    saga = Saga(name="fenced", config=config).add_step("a", paused, undo)
    task = asyncio.create_task(saga.execute({}))
    await asyncio.sleep(0.01)
    [saga_id] = list(storage._sagas)
    storage._sagas[saga_id].lease_expires_at = 0.0
    report = await sagaz.recover(config, sagas=[saga])
    assert report.finished == {saga_id: SagaStatus.COMPENSATED}
    gate.set()
    result = await task
    assert result.status is SagaStatus.COMPENSATED
    stored = await storage.load(saga_id)
    assert stored is not None and stored.status is SagaStatus.COMPENSATED
