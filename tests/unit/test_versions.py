"""Definition fingerprints and the rules that pick the definition finishing a saga in flight
(pure: no storage)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from typing import Any

import pytest

import sagaz
from sagaz import Saga, SagaContext, SagaDefinitionError, SagaStatus, StepStatus, action, compensate
from sagaz.engine.definition import registered_versions
from sagaz.engine.fingerprint import DefinitionShape, ShapeDiff, fingerprint_of, shape_of
from sagaz.engine.types import SagaState, StepState
from sagaz.engine.versions import choose_among, compatibility_problem


async def noop(ctx: SagaContext) -> None:
    return None


async def other(ctx: SagaContext) -> dict[str, Any]:
    return {"x": 1}


def saga(name: str, steps: list[tuple[str, bool, list[str] | None]], **options: Any) -> Saga:
    built = Saga(name=name, **options)
    for step, compensable, deps in steps:
        built.add_step(step, noop, noop if compensable else None, depends_on=deps)
    return built


V1 = [("reserve", True, None), ("charge", True, None), ("ship", True, None)]


def test_the_fingerprint_is_the_shape_not_the_code_the_version_or_the_order() -> None:
    base = fingerprint_of(saga("order", V1))
    assert len(base) == 16 and int(base, 16) >= 0
    same_shape = Saga(name="order", version="9", timeout=5)
    same_shape.add_step("reserve", other, other, max_retries=3)
    same_shape.add_step("charge", other, other, timeout=1)
    same_shape.add_step("ship", other, other)
    assert fingerprint_of(same_shape) == base, "code, retries, timeouts and labels do not count"
    # Independent roots added in another order: the same graph.
    roots_ab = saga("p", [("a", True, []), ("b", False, []), ("c", True, ["a", "b"])])
    roots_ba = saga("p", [("b", False, []), ("a", True, []), ("c", True, ["b", "a"])])
    assert fingerprint_of(roots_ab) == fingerprint_of(roots_ba)


@pytest.mark.parametrize("change", [
    [("reserve", True, None), ("charge_card", True, None), ("ship", True, None)],  # renamed
    [*V1, ("notify", False, None)],                                               # added
    V1[:2],                                                                       # removed
    [("reserve", True, None), ("charge", False, None), ("ship", True, None)],     # no undo
    [("reserve", True, []), ("charge", True, []), ("ship", True, ["charge"])],    # deps
], ids=["renamed", "added", "removed", "compensation", "dependencies"])
def test_every_change_of_shape_changes_the_fingerprint(
    change: list[tuple[str, bool, list[str] | None]],
) -> None:
    assert fingerprint_of(saga("order", change)) != fingerprint_of(saga("order", V1))


def test_the_fingerprint_is_the_same_in_another_process() -> None:
    code = ("from sagaz import Saga\n"
            "async def f(ctx): pass\n"
            "s = Saga(name='order')\n"
            "for n in ('reserve', 'charge', 'ship'): s.add_step(n, f, f)\n"
            "from sagaz.engine.fingerprint import fingerprint_of\n"
            "print(fingerprint_of(s))\n")
    other_process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                   check=True, env={"PYTHONHASHSEED": "12345"}).stdout.strip()
    assert other_process == fingerprint_of(saga("order", V1))


def test_shapes_round_trip_and_tell_what_differs() -> None:
    old = shape_of(saga("order", V1, version="1"))
    assert DefinitionShape.from_json(old.to_json()) == old
    new = shape_of(saga("order", [("reserve", False, None), ("charge_card", True, None),
                                  ("notify", True, None)], version="2"))
    diff = ShapeDiff.between(old, new)
    assert diff.describe() == ("removed steps charge, ship; added steps charge_card, notify; "
                               "compensation removed from step reserve")
    assert ShapeDiff.between(old, old).same


def test_versions_are_validated() -> None:
    with pytest.raises(SagaDefinitionError, match="version must be a non-empty string"):
        Saga(name="order", version="")
    with pytest.raises(SagaDefinitionError, match="compatible_with must be a list"):
        Saga(name="order", compatible_with="1")


def test_several_versions_of_one_name_stay_registered() -> None:
    name = f"multi-{uuid.uuid4().hex[:6]}"
    one, two = saga(name, V1, version="1"), saga(name, V1[:2], version="2")
    sagaz.register(one)
    sagaz.register(two)
    sagaz.register(saga(name, V1[:2], version="2b"))  # same shape as two: replaces it
    assert [s.version for s in registered_versions(name)] == ["1", "2b"]

    class Declared(Saga):
        saga_name = f"{name}-class"
        saga_version = "3"

        @action("a")
        async def a(self, ctx: SagaContext) -> None:
            return None

        @compensate("a")
        async def undo_a(self, ctx: SagaContext) -> None:
            return None

    [built] = registered_versions(Declared.saga_name)
    assert isinstance(built, Declared) and built.version == "3"


def state_of(started: Saga, steps: dict[str, StepStatus]) -> SagaState:
    shape = shape_of(started)
    return SagaState(str(uuid.uuid4()), started.name, SagaStatus.RUNNING, {},
                     {n: StepState(n, s) for n, s in steps.items()},
                     definition_fingerprint=shape.fingerprint,
                     definition_version=started.version)


def test_the_saga_finishes_with_its_own_definition_when_registered() -> None:
    one = saga("order", V1, version="1")
    two = saga("order", V1[:2], version="2")
    state = state_of(one, {"reserve": StepStatus.COMPLETED})
    chosen = choose_among(state, shape_of(one), [one, two])
    assert chosen.definition is one and chosen.how == "same definition"


def test_without_its_definition_the_saga_is_stuck_and_told_why() -> None:
    one = saga("order", V1, version="1")
    two = saga("order", [("reserve", True, None), ("charge_card", True, None)], version="2")
    state = state_of(one, {"reserve": StepStatus.COMPLETED, "charge": StepStatus.COMPLETED})
    chosen = choose_among(state, shape_of(one), [two])
    assert chosen.stuck
    assert f"order v1 ({fingerprint_of(one)})" in chosen.explain()
    assert "removed steps charge, ship; added step charge_card; not declared compatible" in (
        chosen.how)
    assert choose_among(state, shape_of(one), []).how.startswith("no definition named")


def test_a_declared_compatible_definition_takes_over_only_under_the_rule() -> None:
    one = saga("order", V1, version="1")
    three = saga("order", [*V1, ("notify", False, None)], version="3", compatible_with=["1"])
    state = state_of(one, {"reserve": StepStatus.COMPLETED, "charge": StepStatus.UNKNOWN})
    assert choose_among(state, shape_of(one), [three]).definition is three
    # Not declared: stuck.
    undeclared = saga("order", [*V1, ("notify", False, None)], version="3")
    assert compatibility_problem(state, shape_of(one), undeclared) == "not declared compatible"
    # Declared, but a started step is missing, or its compensation changed: stuck.
    renamed = saga("order", [("reserve", True, None), ("charge_card", True, None)],
                   version="3", compatible_with=["1"])
    assert "lacks started step(s) charge" in str(
        compatibility_problem(state, shape_of(one), renamed))
    no_undo = saga("order", [("reserve", True, None), ("charge", False, None)],
                   version="3", compatible_with=[fingerprint_of(one)])
    assert "compensation differs for started step(s) charge" in str(
        compatibility_problem(state, shape_of(one), no_undo))
    # Without the recorded shape the compensations cannot be compared: stuck.
    assert "not recorded" in str(compatibility_problem(state, None, three))


def test_a_saga_that_recorded_no_fingerprint_runs_with_the_newest_definition() -> None:
    one, two = saga("order", V1, version="1"), saga("order", V1, version="2")
    legacy = SagaState(str(uuid.uuid4()), "order", SagaStatus.RUNNING, {})
    assert choose_among(legacy, None, [one, two]).definition is two
