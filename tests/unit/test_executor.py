"""Runtime semantics of the engine on the in-memory storage."""

import asyncio
import itertools
import time
from typing import Any

import pytest

from sagaz import (
    FailureStrategy,
    RetryPolicy,
    Saga,
    SagaFailedError,
    SagaStatus,
    StepStatus,
    StepTimeoutError,
)
from sagaz.errors import SagaTimeoutError
from sagaz.storage.memory import InMemorySagaStorage

FAST = RetryPolicy(base_delay=0.001, max_delay=0.002)


class Recorder:
    """Records the order in which actions and compensations ran."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def step(self, name: str, result: dict[str, Any] | None = None, *, fail: int = 0,
             delay: float = 0.0, sync: bool = False) -> Any:
        """An action that fails its first ``fail`` attempts."""
        calls = {"n": 0}

        def body() -> dict[str, Any] | None:
            calls["n"] += 1
            if calls["n"] <= fail:
                self.log.append(f"{name}!")
                raise RuntimeError(f"{name} failed")
            self.log.append(name)
            return result

        if sync:
            def sync_fn(ctx: dict[str, Any]) -> dict[str, Any] | None:
                time.sleep(delay)
                return body()
            return sync_fn

        async def fn(ctx: dict[str, Any]) -> dict[str, Any] | None:
            if delay:
                await asyncio.sleep(delay)
            return body()
        return fn

    def undo(self, name: str, *, fail: bool = False) -> Any:
        async def fn(ctx: dict[str, Any]) -> None:
            if fail:
                self.log.append(f"undo-{name}!")
                raise RuntimeError(f"undo {name} failed")
            self.log.append(f"undo-{name}")
        return fn


async def test_sequential_success_merges_results(storage: InMemorySagaStorage) -> None:
    r = Recorder()
    saga = Saga(name="order")
    saga.add_step("reserve", r.step("reserve", {"reservation": 7}), r.undo("reserve"))
    saga.add_step("charge", r.step("charge", {"charged": True}), r.undo("charge"))
    ctx = await saga.run({"order_id": "A1", "amount": 10})
    assert ctx == {"order_id": "A1", "amount": 10, "reservation": 7, "charged": True}
    assert r.log == ["reserve", "charge"]


async def test_actions_see_previous_results_and_may_be_plain_functions(
    storage: InMemorySagaStorage,
) -> None:
    seen = {}

    def second(ctx: dict[str, Any]) -> dict[str, Any]:
        seen.update(ctx)
        return {"b": ctx["a"] + 1}

    saga = Saga(name="sync").add_step("one", lambda ctx: {"a": 1}).add_step("two", second)
    assert await saga.run({}) == {"a": 1, "b": 2}
    assert seen == {"a": 1}


async def test_in_place_context_changes_are_kept(storage: InMemorySagaStorage) -> None:
    async def mutate(ctx: dict[str, Any]) -> None:
        ctx["touched"] = True

    saga = Saga(name="mutate").add_step("a", mutate)
    assert await saga.run({"x": 1}) == {"x": 1, "touched": True}


async def test_failure_compensates_completed_steps_in_reverse(
    storage: InMemorySagaStorage,
) -> None:
    r = Recorder()
    saga = Saga(name="order", retry_policy=FAST)
    saga.add_step("a", r.step("a"), r.undo("a"))
    saga.add_step("b", r.step("b"), r.undo("b"))
    saga.add_step("c", r.step("c", fail=10), r.undo("c"))
    saga.add_step("d", r.step("d"), r.undo("d"))
    with pytest.raises(SagaFailedError) as info:
        await saga.run({})
    err = info.value
    assert r.log == ["a", "b", "c!", "undo-b", "undo-a"]
    assert err.status is SagaStatus.COMPENSATED
    assert err.failed_step == "c"
    assert err.compensation_errors == {}
    assert isinstance(err.__cause__, RuntimeError) and str(err.__cause__) == "c failed"
    assert err.saga_id
    stored = await storage.load(err.saga_id)
    assert stored is not None and stored.status is SagaStatus.COMPENSATED
    assert stored.steps["c"].status is StepStatus.FAILED
    assert "d" not in stored.steps
    assert stored.lease_owner is None


async def test_compensation_waits_for_all_dependants(storage: InMemorySagaStorage) -> None:
    """root <- (left, right) <- fail: both branches are undone before root."""
    r = Recorder()
    saga = Saga(name="diamond")
    saga.add_step("root", r.step("root"), r.undo("root"))
    saga.add_step("left", r.step("left", delay=0.01), r.undo("left"), depends_on=["root"])
    saga.add_step("right", r.step("right"), r.undo("right"), depends_on=["root"])
    saga.add_step("boom", r.step("boom", fail=1), None, depends_on=["left", "right"])
    result = await saga.execute({})
    assert result.status is SagaStatus.COMPENSATED
    undo = [e for e in r.log if e.startswith("undo")]
    assert set(undo[:2]) == {"undo-left", "undo-right"} and undo[2] == "undo-root"


async def test_failing_compensation_does_not_stop_the_others(
    storage: InMemorySagaStorage,
) -> None:
    r = Recorder()
    saga = Saga(name="order", retry_policy=FAST)
    saga.add_step("a", r.step("a"), r.undo("a"))
    saga.add_step("b", r.step("b"), r.undo("b", fail=True), max_retries=1)
    saga.add_step("c", r.step("c", fail=5))
    with pytest.raises(SagaFailedError) as info:
        await saga.run({})
    assert info.value.status is SagaStatus.FAILED
    assert set(info.value.compensation_errors) == {"b"}
    assert r.log == ["a", "b", "c!", "undo-b!", "undo-b!", "undo-a"]


async def test_execute_returns_a_result_and_never_raises_for_step_failures(
    storage: InMemorySagaStorage,
) -> None:
    r = Recorder()
    saga = Saga(name="order")
    saga.add_step("a", r.step("a", {"x": 1}), r.undo("a"))
    saga.add_step("b", r.step("b", fail=1))
    result = await saga.execute({"k": "v"})
    assert result.status is SagaStatus.COMPENSATED and not result.succeeded
    assert result.failed_step == "b"
    assert isinstance(result.error, RuntimeError)
    assert [(s.name, s.status) for s in result.steps] == [
        ("a", StepStatus.COMPENSATED), ("b", StepStatus.FAILED)]
    assert result.steps[0].attempts == 1 and result.steps[0].duration is not None
    assert result.duration >= 0
    ok = await Saga(name="ok").add_step("a", r.step("a2")).execute({})
    assert ok.succeeded and ok.status is SagaStatus.COMPLETED


async def test_retries_then_success(storage: InMemorySagaStorage) -> None:
    r = Recorder()
    saga = Saga(name="retry", retry_policy=FAST)
    saga.add_step("flaky", r.step("flaky", {"ok": 1}, fail=2), max_retries=2)
    result = await saga.execute({})
    assert result.status is SagaStatus.COMPLETED
    assert r.log == ["flaky!", "flaky!", "flaky"]
    assert result.steps[0].attempts == 3


async def test_retries_exhausted(storage: InMemorySagaStorage) -> None:
    r = Recorder()
    saga = Saga(name="retry", retry_policy=FAST)
    saga.add_step("flaky", r.step("flaky", fail=3), max_retries=2)
    result = await saga.execute({})
    assert result.status is SagaStatus.COMPENSATED
    assert r.log == ["flaky!"] * 3


async def test_backoff_follows_the_injected_policy(storage: InMemorySagaStorage) -> None:
    calls: list[float] = []

    async def flaky(ctx: dict[str, Any]) -> None:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise RuntimeError("again")

    policy = RetryPolicy(base_delay=0.05, multiplier=2, jitter=False)
    saga = Saga(name="backoff", retry_policy=policy).add_step("s", flaky, max_retries=2)
    await saga.run({})
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    # 0.05 then 0.1: the second wait is clearly longer than the first.
    assert gaps[0] >= 0.045 and gaps[1] >= 0.09 and gaps[1] > gaps[0] * 1.5


async def test_step_timeout_is_a_failed_step(storage: InMemorySagaStorage) -> None:
    r = Recorder()
    saga = Saga(name="slow")
    saga.add_step("a", r.step("a"), r.undo("a"))
    saga.add_step("slow", r.step("slow", delay=5), r.undo("slow"), timeout=0.05)
    with pytest.raises(SagaFailedError) as info:
        await saga.run({})
    assert isinstance(info.value.__cause__, StepTimeoutError)
    assert info.value.failed_step == "slow"
    assert r.log == ["a", "undo-a"]


async def test_step_timeout_applies_to_each_attempt(storage: InMemorySagaStorage) -> None:
    attempts = []

    async def slow_then_fast(ctx: dict[str, Any]) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            await asyncio.sleep(5)

    saga = Saga(name="t", retry_policy=FAST).add_step("s", slow_then_fast, timeout=0.05,
                                                       max_retries=1)
    await saga.run({})
    assert len(attempts) == 2


async def test_saga_timeout_cancels_and_compensates(storage: InMemorySagaStorage) -> None:
    r = Recorder()
    saga = Saga(name="deadline", timeout=0.1)
    saga.add_step("a", r.step("a"), r.undo("a"))
    saga.add_step("b", r.step("b", delay=5), r.undo("b"))
    started = time.monotonic()
    result = await saga.execute({})
    assert time.monotonic() - started < 2
    assert result.status is SagaStatus.COMPENSATED
    assert isinstance(result.error, SagaTimeoutError)
    assert result.failed_step == "b"
    assert r.log == ["a", "undo-a"]
    assert result.steps[1].status is StepStatus.CANCELLED


async def test_independent_steps_run_concurrently(storage: InMemorySagaStorage) -> None:
    running = 0
    peak = 0

    async def work(ctx: dict[str, Any]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1

    saga = Saga(name="fanout")
    for name in "abcd":
        saga.add_step(name, work, depends_on=[])
    saga.add_step("join", work, depends_on=list("abcd"))
    started = time.monotonic()
    await saga.run({})
    assert peak == 4
    assert time.monotonic() - started < 0.05 * 5 * 0.8  # clearly less than sequential


async def test_parallel_results_all_merge(storage: InMemorySagaStorage) -> None:
    def put(key: str, delay: float) -> Any:
        async def fn(ctx: dict[str, Any]) -> dict[str, Any]:
            await asyncio.sleep(delay)
            ctx[f"{key}-inplace"] = 1
            return {key: 1}
        return fn

    saga = Saga(name="merge")
    saga.add_step("a", put("a", 0.02), depends_on=[])
    saga.add_step("b", put("b", 0.0), depends_on=[])
    saga.add_step("c", put("c", 0.01), depends_on=[])
    ctx = await saga.run({})
    assert ctx == {"a": 1, "b": 1, "c": 1, "a-inplace": 1, "b-inplace": 1, "c-inplace": 1}


def _parallel_saga(r: Recorder, strategy: FailureStrategy, **kw: Any) -> Saga:
    saga = Saga(name=f"par-{strategy}", failure_strategy=strategy, **kw)
    saga.add_step("root", r.step("root"), r.undo("root"))
    saga.add_step("slow", r.step("slow", delay=0.3), r.undo("slow"), depends_on=["root"])
    saga.add_step("bad", r.step("bad", fail=1, delay=0.01), r.undo("bad"), depends_on=["root"])
    saga.add_step("after", r.step("after"), r.undo("after"), depends_on=["slow", "bad"])
    return saga


async def test_fail_fast_cancels_running_siblings(storage: InMemorySagaStorage) -> None:
    r = Recorder()
    result = await _parallel_saga(r, FailureStrategy.FAIL_FAST).execute({})
    assert result.status is SagaStatus.COMPENSATED
    assert "slow" not in r.log and "undo-slow" not in r.log
    assert r.log == ["root", "bad!", "undo-root"]
    assert {s.name: s.status for s in result.steps}["slow"] is StepStatus.CANCELLED


async def test_fail_fast_is_the_default() -> None:
    assert Saga(name="d").failure_strategy is FailureStrategy.FAIL_FAST

    class Declared(Saga):
        saga_name = "declared-wait-all"
        failure_strategy = FailureStrategy.WAIT_ALL

    assert Declared().failure_strategy is FailureStrategy.WAIT_ALL


async def test_wait_all_lets_siblings_finish_then_compensates_them(
    storage: InMemorySagaStorage,
) -> None:
    r = Recorder()
    result = await _parallel_saga(r, FailureStrategy.WAIT_ALL).execute({})
    assert result.status is SagaStatus.COMPENSATED
    assert r.log[:3] == ["root", "bad!", "slow"]
    assert r.log[3:] == ["undo-slow", "undo-root"]
    assert "after" not in r.log


async def test_grace_lets_quick_siblings_finish(storage: InMemorySagaStorage) -> None:
    r = Recorder()
    saga = _parallel_saga(r, FailureStrategy.FAIL_FAST_WITH_GRACE, grace_seconds=1.0)
    result = await saga.execute({})
    assert r.log == ["root", "bad!", "slow", "undo-slow", "undo-root"]
    assert result.status is SagaStatus.COMPENSATED


async def test_grace_cancels_slow_siblings(storage: InMemorySagaStorage) -> None:
    r = Recorder()
    saga = _parallel_saga(r, FailureStrategy.FAIL_FAST_WITH_GRACE, grace_seconds=0.05)
    started = time.monotonic()
    result = await saga.execute({})
    assert time.monotonic() - started < 0.3
    assert r.log == ["root", "bad!", "undo-root"]
    assert result.status is SagaStatus.COMPENSATED


async def test_same_idempotency_key_runs_steps_once(storage: InMemorySagaStorage) -> None:
    r = Recorder()
    saga = Saga(name="idem").add_step("a", r.step("a", {"n": 1}))
    first = await saga.run({"v": 1}, idempotency_key="order-42")
    second = await saga.run({"v": 1}, idempotency_key="order-42")
    assert first == second == {"v": 1, "n": 1}
    assert r.log == ["a"]


async def test_concurrent_starts_of_one_key_run_steps_once(storage: InMemorySagaStorage) -> None:
    r = Recorder()
    saga = Saga(name="idem-c").add_step("a", r.step("a", {"n": 1}, delay=0.05))
    results = await asyncio.gather(*[saga.run({}, idempotency_key="k") for _ in range(10)])
    assert all(res == {"n": 1} for res in results)
    assert r.log == ["a"]


async def test_concurrent_starts_all_see_the_failure(storage: InMemorySagaStorage) -> None:
    r = Recorder()
    saga = Saga(name="idem-f").add_step("a", r.step("a", fail=1, delay=0.02))
    outcomes = await asyncio.gather(*[saga.run({}, idempotency_key="k") for _ in range(3)],
                                    return_exceptions=True)
    assert all(isinstance(o, SagaFailedError) for o in outcomes)
    assert r.log == ["a!"]


async def test_explicit_saga_id(storage: InMemorySagaStorage) -> None:
    saga = Saga(name="by-id").add_step("a", lambda ctx: {"x": 1})
    sid = "2b0f8e9a-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
    result = await saga.execute({}, saga_id=sid)
    assert result.saga_id == sid
    again = await saga.execute({}, saga_id=sid)
    assert again.status is SagaStatus.COMPLETED and again.context == {"x": 1}


async def test_bad_saga_id(storage: InMemorySagaStorage) -> None:
    from sagaz import SagaDefinitionError

    saga = Saga(name="by-id").add_step("a", lambda ctx: None)
    with pytest.raises(SagaDefinitionError, match="must be a UUID"):
        await saga.run({}, saga_id="nope")
    with pytest.raises(SagaDefinitionError, match="not both"):
        await saga.run({}, saga_id="2b0f8e9a-1c2d-4e5f-8a9b-0c1d2e3f4a5b", idempotency_key="k")


async def test_result_that_is_not_a_dict_fails_and_is_compensated(
    storage: InMemorySagaStorage,
) -> None:
    r = Recorder()
    saga = Saga(name="bad-result")
    saga.add_step("a", lambda ctx: 42, r.undo("a"))
    result = await saga.execute({})
    assert result.status is SagaStatus.COMPENSATED
    assert "return a dict" in (result.error_message or "")
    assert r.log == ["undo-a"]  # it ran, so its effects are undone


async def test_every_transition_is_committed_before_the_next_step(
    storage: InMemorySagaStorage,
) -> None:
    seen: list[tuple[str, str | None]] = []

    def check(name: str) -> Any:
        async def fn(ctx: Any) -> None:
            state = await storage.load(ctx.saga_id)
            assert state is not None
            seen.append((name, ",".join(sorted(
                n for n, s in state.steps.items() if s.status is StepStatus.COMPLETED)) or None))
        return fn

    saga = Saga(name="durable").add_step("a", check("a")).add_step("b", check("b"))
    saga.add_step("c", check("c"))
    await saga.run({})
    assert seen == [("a", None), ("b", "a"), ("c", "a,b")]


async def test_context_tells_the_step_who_it_is(storage: InMemorySagaStorage) -> None:
    seen = {}

    async def who(ctx: Any) -> None:
        seen.update(saga_id=ctx.saga_id, step=ctx.step, attempt=ctx.attempt, name=ctx.saga_name)

    result = await Saga(name="who").add_step("me", who).execute({})
    assert seen == {"saga_id": result.saga_id, "step": "me", "attempt": 1, "name": "who"}


async def test_listeners_see_the_lifecycle() -> None:
    from sagaz import SagaConfig, SagaListener

    events: list[str] = []

    class Spy(SagaListener):
        def step_completed(self, saga_name: str, saga_id: str, step: str, d: float) -> None:
            events.append(f"done:{step}")

        def compensation_completed(self, saga_name: str, saga_id: str, step: str,
                                   error: BaseException | None) -> None:
            events.append(f"undone:{step}")

        def saga_finished(self, saga_name: str, saga_id: str, status: str, d: float) -> None:
            events.append(status)
            raise RuntimeError("listener bugs never fail a saga")

    r = Recorder()
    config = SagaConfig(storage=InMemorySagaStorage(), listeners=[Spy()])
    saga = Saga(name="spy", config=config)
    saga.add_step("a", r.step("a"), r.undo("a")).add_step("b", r.step("b", fail=1))
    result = await saga.execute({})
    assert result.status is SagaStatus.COMPENSATED
    assert events == ["done:a", "undone:a", "COMPENSATED"]


async def test_a_cancelled_plain_function_step_is_waited_for_and_compensated(
    storage: InMemorySagaStorage,
) -> None:
    """A thread cannot be cancelled: when FAIL_FAST cancels a running plain-function sibling,
    the engine waits for it, records it COMPLETED and so compensates it."""
    r = Recorder()
    saga = Saga(name="sync-sibling")
    saga.add_step("slow", r.step("slow", delay=0.2, sync=True), r.undo("slow"), depends_on=[])
    saga.add_step("bad", r.step("bad", fail=1, delay=0.01), r.undo("bad"), depends_on=[])
    result = await saga.execute({})
    assert result.status is SagaStatus.COMPENSATED
    assert sorted(r.log) == ["bad!", "slow", "undo-slow"]
    assert {s.name: s.status for s in result.steps}["slow"] is StepStatus.COMPENSATED


async def test_saga_timeout_waits_for_a_plain_function_step(storage: InMemorySagaStorage) -> None:
    r = Recorder()
    saga = Saga(name="sync-deadline", timeout=0.05)
    saga.add_step("slow", r.step("slow", delay=0.2, sync=True), r.undo("slow"))
    saga.add_step("next", r.step("next"), r.undo("next"))
    result = await saga.execute({})
    assert result.status is SagaStatus.COMPENSATED
    assert r.log == ["slow", "undo-slow"]
