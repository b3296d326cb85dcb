"""The plan replayed through every interrupted sequence, in the manner of Patroni's quorum tests:
for small graphs, every failing step, failure strategy, recovery mode, schedule and cancel point,
crash at every commit (after it is durable, or losing it) and let recovery's plan finish; then
check the invariants of :func:`plan_world.check_invariants`. Hypothesis covers random graphs."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from plan_world import Behaviour, World, check_invariants, graph_of

from sagaz.engine.plan import WaitSpec
from sagaz.engine.types import FailureStrategy, SagaStatus

SHAPES: dict[str, dict[str, tuple[str, ...]]] = {
    "chain": {"a": (), "b": ("a",), "c": ("b",)},
    "diamond": {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")},
    "two roots": {"a": (), "b": (), "c": ("a", "b")},
}
PICKS = {"first": lambda n: 0, "last": lambda n: n - 1}


def commits_of(world_args: dict[str, Any]) -> int:
    world = World(**world_args)
    world.run()
    return world.commits


@pytest.mark.timeout(300)
def test_every_crash_point_of_every_small_saga_ends_consistently() -> None:
    cases = 0
    for (shape, deps), strategy, resume, pick in itertools.product(
            SHAPES.items(), FailureStrategy, (False, True), PICKS):
        graph = graph_of(deps)
        for failing in (None, *deps):
            behaviour = Behaviour(failing=frozenset({failing} if failing else ()),
                                  pick=PICKS[pick])
            args = {"graph": graph, "behaviour": behaviour, "strategy": strategy,
                    "resume": resume}
            for crash_after in range(1, commits_of(args) + 1):
                for lose in (False, True):
                    world = World(**args, crash_after=crash_after, lose_commit=lose)
                    world.run()
                    try:
                        check_invariants(world)
                    except AssertionError as exc:
                        raise AssertionError(
                            f"{shape} {strategy} resume={resume} pick={pick} failing={failing} "
                            f"crash_after={crash_after} lose={lose}: {exc}") from exc
                    cases += 1
    assert cases > 500


def test_without_failure_or_crash_every_saga_completes_each_step_once() -> None:
    for deps in SHAPES.values():
        world = World(graph_of(deps), Behaviour())
        assert world.run().status is SagaStatus.COMPLETED
        assert world.journal.effects == dict.fromkeys(deps, 1)
        # The last step's completion committed the saga: no separate final write.
        assert world.commits == len(deps)


def test_a_failure_compensates_what_completed_in_reverse_dependency_order() -> None:
    world = World(graph_of(SHAPES["chain"]), Behaviour(failing=frozenset({"c"})))
    assert world.run().status is SagaStatus.COMPENSATED
    assert world.journal.undone == ["b", "a"]


def test_a_failed_compensation_fails_the_saga() -> None:
    world = World(graph_of(SHAPES["chain"]),
                  Behaviour(failing=frozenset({"c"}), failing_compensations=frozenset({"b"})))
    assert world.run().status is SagaStatus.FAILED
    assert world.journal.undone == ["b", "a"]


def test_cancel_at_every_step_boundary_compensates_what_completed() -> None:
    for (shape, deps), strategy, pick in itertools.product(SHAPES.items(), FailureStrategy, PICKS):
        graph = graph_of(deps)
        plain = World(graph, Behaviour(pick=PICKS[pick]), strategy=strategy)
        plain.run()
        for cancel_at in range(len(plain.journal.commands)):
            world = World(graph, Behaviour(pick=PICKS[pick]), strategy=strategy)
            state = world.run(cancel_at=cancel_at)
            check_invariants(world)
            if state.status is SagaStatus.COMPENSATED:
                assert state.error == "CANCELLED", (shape, cancel_at)
            else:  # cancelled too late: the last step had completed the saga
                assert state.status is SagaStatus.COMPLETED, (shape, cancel_at)


@st.composite
def worlds(draw: Any) -> tuple[World, int | None]:
    n = draw(st.integers(min_value=1, max_value=6))
    names = [f"s{i}" for i in range(n)]
    deps = {name: tuple(sorted(draw(st.sets(st.sampled_from(names[:i]), max_size=3))) if i
                        else ()) for i, name in enumerate(names)}
    compensable = draw(st.sets(st.sampled_from(names)))
    waits = {name: WaitSpec(draw(st.sampled_from(["Go", "Stop", None])) or None,
                            draw(st.sampled_from([None, 5.0, 50_000.0])),
                            draw(st.sampled_from([None, {}, {"late": True}])))
             for name in draw(st.sets(st.sampled_from(names), max_size=2))}
    waits = {n: w if (w.signal or w.timeout) else WaitSpec("Go", w.timeout, w.on_timeout)
             for n, w in waits.items()}
    picks = draw(st.lists(st.integers(0, 5), min_size=1, max_size=20))
    cursor = itertools.cycle(picks)
    behaviour = Behaviour(
        failing=frozenset(draw(st.sets(st.sampled_from(names), max_size=2))),
        failing_compensations=frozenset(draw(st.sets(st.sampled_from(names), max_size=1))),
        drains=frozenset(draw(st.sets(st.sampled_from(names), max_size=2))),
        pick=lambda size: next(cursor))
    world = World(graph_of(deps, compensable, waits), behaviour,
                  crash_after=draw(st.one_of(st.none(), st.integers(1, 14))),
                  lose_commit=draw(st.booleans()),
                  strategy=draw(st.sampled_from(list(FailureStrategy))),
                  resume=draw(st.booleans()))
    for name in draw(st.lists(st.sampled_from(["Go", "Stop"]), max_size=3)):
        world.send(name)
    return world, draw(st.one_of(st.none(), st.integers(0, 20)))


@pytest.mark.timeout(300)
@settings(max_examples=200, deadline=None)
@given(case=worlds())
def test_random_sagas_interrupted_anywhere_end_consistently(case: tuple[World, int | None]) -> None:
    world, cancel_at = case
    world.run(cancel_at=cancel_at)
    check_invariants(world)


WAIT_SHAPES: dict[str, tuple[dict[str, tuple[str, ...]], dict[str, WaitSpec]]] = {
    "approval": ({"a": (), "w": ("a",), "b": ("w",)},
                 {"w": WaitSpec("Approved", 60.0)}),
    "lenient approval": ({"a": (), "w": ("a",), "b": ("w",)},
                         {"w": WaitSpec("Approved", 60.0, {"approved": False})}),
    "delay beside a branch": ({"a": (), "d": ("a",), "c": ("a",), "e": ("d", "c")},
                              {"d": WaitSpec(None, 30.0, {})}),
    "signal only": ({"a": (), "w": ("a",)}, {"w": WaitSpec("Go", None)}),
}


def test_every_crash_point_of_sagas_with_waits_ends_terminal_or_waiting() -> None:
    cases = 0
    for (shape, (deps, waits)), signalled, failing, resume in itertools.product(
            WAIT_SHAPES.items(), (False, True), (None, "a", "b", "e"), (False, True)):
        if failing is not None and failing not in deps:
            continue
        graph = graph_of(deps, waits=waits)
        behaviour = Behaviour(failing=frozenset({failing} if failing else ()))

        def world(graph: Any = graph, behaviour: Behaviour = behaviour, resume: bool = resume,
                  signalled: bool = signalled, waits: dict[str, WaitSpec] = waits,
                  **extra: Any) -> World:
            made = World(graph, behaviour, resume=resume, **extra)
            if signalled:
                for spec in waits.values():
                    if spec.signal:
                        made.send(spec.signal)
            return made

        plain = world()
        plain.run()
        for crash_after in range(1, plain.commits + 1):
            for lose in (False, True):
                crashed = world(crash_after=crash_after, lose_commit=lose)
                crashed.run()
                try:
                    check_invariants(crashed)
                except AssertionError as exc:
                    raise AssertionError(f"{shape} signalled={signalled} failing={failing} "
                                         f"crash_after={crash_after} lose={lose}: {exc}") from exc
                cases += 1
    assert cases > 100


def test_a_wait_parks_then_ends_by_signal_or_timeout() -> None:
    deps, waits = WAIT_SHAPES["approval"]
    graph = graph_of(deps, waits=waits)
    signalled = World(graph, Behaviour())
    signalled.send("Approved")
    assert signalled.run().status is SagaStatus.COMPLETED
    assert "Park" not in signalled.journal.commands  # the kept signal was there already
    late = World(graph, Behaviour())
    assert late.run(wait_for=30).status is SagaStatus.COMPENSATED  # two resumes: 30s, 60s
    assert late.journal.commands.count("Park") == 2 and late.journal.undone == ["a"]
    only_deps, only_waits = WAIT_SHAPES["signal only"]
    forever = World(graph_of(only_deps, waits=only_waits), Behaviour())
    assert forever.run().status is SagaStatus.WAITING
    check_invariants(forever)
