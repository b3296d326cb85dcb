"""Single decisions of the plan: what each event leads to."""

from __future__ import annotations

from plan_world import graph_of

from sagaz.engine import plan
from sagaz.engine.types import FailureStrategy, SagaState, SagaStatus, StepState, StepStatus

ROOTS = graph_of({"a": (), "b": (), "c": ("a", "b")})
CHAIN = graph_of({"a": (), "b": ("a",), "c": ("b",)})


def state(status: SagaStatus = SagaStatus.RUNNING, **steps: StepStatus) -> SagaState:
    return SagaState("s", "n", status, {}, {k: StepState(k, v) for k, v in steps.items()})


def test_a_parallel_level_starts_together_and_unlocks_its_dependant() -> None:
    p = plan.SagaPlan(ROOTS)
    assert p.next(state()) == plan.RunSteps(("a", "b"))
    assert p.next(state(a=StepStatus.COMPLETED), {"b"}, ["a"]) == plan.AwaitSteps()
    done = state(a=StepStatus.COMPLETED, b=StepStatus.COMPLETED)
    assert p.next(done, (), ["b"]) == plan.RunSteps(("c",))
    assert p.completes_saga(done, "c")
    assert not p.completes_saga(state(a=StepStatus.COMPLETED), "c")


def test_the_last_completion_already_stored_the_final_status() -> None:
    assert plan.SagaPlan(CHAIN).next(state(SagaStatus.COMPLETED)) == plan.Finish(
        SagaStatus.COMPLETED, record=False)


def test_fail_fast_cancels_running_siblings_then_compensates() -> None:
    p = plan.SagaPlan(ROOTS, FailureStrategy.FAIL_FAST)
    p.step_ended("a", StepStatus.FAILED)
    assert p.next(state(), {"b"}) == plan.CancelSteps(("b",))
    assert p.next(state(), {"b"}) == plan.AwaitSteps()
    p.step_ended("b", StepStatus.CANCELLED)
    assert p.next(state()) == plan.BeginCompensation((), "a", plan.Stop.FAILED)


def test_wait_all_lets_siblings_finish() -> None:
    p = plan.SagaPlan(ROOTS, FailureStrategy.WAIT_ALL)
    p.step_ended("a", StepStatus.FAILED)
    assert p.next(state(), {"b"}) == plan.AwaitSteps()
    # A sibling finishing after the failure does not complete the saga.
    assert not p.completes_saga(state(a=StepStatus.COMPLETED, c=StepStatus.COMPLETED), "b")


def test_grace_waits_for_every_sibling_once_then_cancels() -> None:
    p = plan.SagaPlan(ROOTS, FailureStrategy.FAIL_FAST_WITH_GRACE, grace_seconds=1.5)
    p.step_ended("b", StepStatus.FAILED)
    assert p.next(state(), {"a"}) == plan.AwaitSteps(every=True, timeout=1.5)
    p.grace_ended()
    assert p.next(state(), {"a"}) == plan.CancelSteps(("a",))


def test_the_deadline_interrupts_everything_and_blames_the_first_running_step() -> None:
    p = plan.SagaPlan(ROOTS, FailureStrategy.WAIT_ALL)
    assert p.deadline({"b", "a"}) in (plan.CancelSteps(("a", "b")), plan.CancelSteps(("b", "a")))
    assert p.failed_step == "a"
    assert p.next(state(), {"a"}) == plan.AwaitSteps()
    assert p.next(state()) == plan.BeginCompensation((), "a", plan.Stop.DEADLINE)


def test_a_cancel_request_stops_at_the_next_step_boundary() -> None:
    p = plan.SagaPlan(CHAIN)
    p.request_cancel("customer asked")
    # The running step is not interrupted; nothing new starts; its completion does not
    # complete the saga.
    assert p.next(state(a=StepStatus.COMPLETED, b=StepStatus.COMPLETED), {"c"}) == (
        plan.AwaitSteps())
    assert not p.completes_saga(state(a=StepStatus.COMPLETED, b=StepStatus.COMPLETED), "c")
    assert p.next(state(a=StepStatus.COMPLETED)) == plan.BeginCompensation(
        (), None, plan.Stop.CANCELLED)
    assert p.cancel_reason == "customer asked"


def test_compensation_runs_dependants_first_and_reports_failures() -> None:
    p = plan.SagaPlan(ROOTS)
    comp = state(SagaStatus.COMPENSATING, a=StepStatus.COMPLETED, b=StepStatus.COMPLETED,
                 c=StepStatus.UNKNOWN)
    assert p.next(comp) == plan.CompensateSteps(("c",))
    comp.steps["c"].status = StepStatus.COMPENSATED
    assert p.next(comp) == plan.CompensateSteps(("b", "a"))
    assert p.next(comp, {"a", "b"}) == plan.AwaitSteps()
    comp.steps["a"].status = StepStatus.COMPENSATED
    comp.steps["b"].status = StepStatus.COMPENSATION_FAILED
    assert p.next(comp) == plan.Finish(SagaStatus.FAILED)


def test_recovery_compensates_steps_that_may_have_run_unless_it_resumes() -> None:
    half = state(a=StepStatus.COMPLETED)
    assert plan.SagaPlan(CHAIN, recovering=True).next(half) == plan.BeginCompensation(
        ("b",), None, plan.Stop.RECOVERED)
    assert plan.SagaPlan(CHAIN, recovering=True, resume=True).next(half) == plan.RunSteps(("b",))
    cancelled = plan.SagaPlan(CHAIN, recovering=True, resume=True)
    cancelled.request_cancel()
    assert cancelled.next(half) == plan.BeginCompensation(("b",), None, plan.Stop.CANCELLED)


def test_retry_verdicts() -> None:
    assert plan.after_failed_attempt(1, 2) == plan.RetryAfter(1)
    assert plan.after_failed_attempt(3, 2) == plan.GiveUp(StepStatus.FAILED)
    assert plan.after_failed_attempt(1, 5, draining=True) == plan.GiveUp(StepStatus.FAILED)
    assert plan.after_failed_attempt(1, 5, bad_result=True) == plan.GiveUp(StepStatus.UNKNOWN)
    assert plan.after_failed_compensation(1, 1) == plan.RetryAfter(1)
    assert plan.after_failed_compensation(2, 1) == plan.GiveUp(StepStatus.COMPENSATION_FAILED)
    assert plan.after_failed_compensation(1, 3, bad_result=True) == plan.GiveUp(
        StepStatus.COMPENSATION_FAILED)


def test_a_parked_saga_asked_to_cancel_compensates_instead_of_waiting() -> None:
    graph = graph_of({"a": (), "w": ("a",), "b": ("w",)},
                     waits={"w": plan.WaitSpec("Approved", 60.0)})
    parked = state(SagaStatus.WAITING, a=StepStatus.COMPLETED)
    parked.steps["w"] = StepState("w", StepStatus.PENDING, started_at=100.0)
    p = plan.SagaPlan(graph)
    assert p.next(parked, now=120.0) == plan.Park(160.0)
    p.request_cancel("operator")
    assert p.next(parked, now=120.0) == plan.BeginCompensation((), None, plan.Stop.CANCELLED)


def test_waits_resolve_by_signal_first_then_by_timer() -> None:
    from sagaz.engine.types import Signal

    graph = graph_of({"w": (), "d": ()}, waits={"w": plan.WaitSpec("Go", 10.0),
                                                 "d": plan.WaitSpec(None, 5.0, {})})
    fresh = state()
    assert plan.SagaPlan(graph).next(fresh, now=0.0) == plan.ReachWaits(("w", "d"))
    fresh.steps["w"] = StepState("w", StepStatus.PENDING, started_at=0.0)
    fresh.steps["d"] = StepState("d", StepStatus.PENDING, started_at=0.0)
    assert plan.SagaPlan(graph).next(fresh, now=1.0) == plan.Park(5.0)
    assert plan.SagaPlan(graph).next(fresh, now=5.0) == plan.ResolveWait("d", None, {})
    go = Signal("s1", "Go", {"x": 1})
    fresh.signals.append(go)
    assert plan.SagaPlan(graph).next(fresh, now=1.0) == plan.ResolveWait("w", go)
    fresh.signals.clear()
    assert plan.SagaPlan(graph).next(fresh, now=10.0) == plan.ResolveWait("w", None, None)


def test_a_step_rerun_after_a_crash_keeps_its_uncertainty_when_it_does_not_complete() -> None:
    """Found by the random replay: in resume mode a step that may have run before the crash,
    run again and cancelled (or failed) this time, may still have the first run's effect."""
    p = plan.SagaPlan(ROOTS, recovering=True, resume=True)
    assert p.next(state()) == plan.RunSteps(("a", "b"))
    assert p.ended_as("b", StepStatus.CANCELLED) is StepStatus.UNKNOWN
    assert p.ended_as("a", StepStatus.FAILED) is StepStatus.UNKNOWN
    assert plan.SagaPlan(ROOTS).ended_as("b", StepStatus.CANCELLED) is StepStatus.CANCELLED
