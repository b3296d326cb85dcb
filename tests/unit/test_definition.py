"""Definitions: ordering rules, validation before any step runs, the declarative form, Mermaid."""

from typing import Any

import pytest

from sagaz import Saga, SagaDefinitionError, action, compensate
from sagaz.engine.definition import get_registered, register


async def noop(ctx: dict[str, Any]) -> None:
    return None


def test_steps_are_sequential_by_default_and_depends_on_makes_a_dag() -> None:
    saga = Saga(name="order")
    saga.add_step("reserve", noop)
    saga.add_step("charge", noop)
    saga.add_step("email", noop, depends_on=["reserve"])
    saga.add_step("audit", noop, depends_on=[])
    g = saga.graph
    assert g.deps == {"reserve": (), "charge": ("reserve",), "email": ("reserve",), "audit": ()}
    assert g.dependants["reserve"] == ("charge", "email")


def test_name_is_required() -> None:
    with pytest.raises(SagaDefinitionError, match="needs a name"):
        Saga()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda s: s.add_step("a", noop).add_step("a", noop), "duplicate step name 'a'"),
        (lambda s: s.add_step("a", "not callable"), "must be callable"),
        (lambda s: s.add_step("a", noop, 42), "compensation must be callable"),
        (lambda s: s.add_step("a", noop, max_retries=-1), "max_retries"),
        (lambda s: s.add_step("a", noop, timeout=0), "timeout"),
        (lambda s: s.add_step("a", noop, depends_on="b"), "depends_on must be a list"),
        (lambda s: s.add_step("", noop), "non-empty"),
    ],
)
def test_add_step_refuses_bad_steps(build: Any, message: str) -> None:
    with pytest.raises(SagaDefinitionError, match=message):
        build(Saga(name="bad"))


def test_unknown_dependency_is_reported_at_validation() -> None:
    saga = Saga(name="bad").add_step("a", noop, depends_on=["ghost"])
    with pytest.raises(SagaDefinitionError, match="unknown step 'ghost'") as info:
        saga.validate()
    assert info.value.step == "a"


def test_cycles_are_reported_with_their_path() -> None:
    saga = Saga(name="loop")
    saga.add_step("a", noop, depends_on=["c"])
    saga.add_step("b", noop, depends_on=["a"])
    saga.add_step("c", noop, depends_on=["b"])
    with pytest.raises(SagaDefinitionError, match="cycle: a -> c -> b -> a"):
        saga.validate()


def test_self_dependency() -> None:
    with pytest.raises(SagaDefinitionError, match="depends on itself"):
        Saga(name="s").add_step("a", noop, depends_on=["a"]).validate()


def test_empty_saga_is_invalid() -> None:
    with pytest.raises(SagaDefinitionError, match="no steps"):
        Saga(name="empty").validate()


async def test_invalid_definition_fails_before_any_step_runs(storage: object) -> None:
    ran = []

    async def step(ctx: dict[str, Any]) -> None:
        ran.append(1)

    saga = Saga(name="bad-run").add_step("a", step).add_step("b", step, depends_on=["zzz"])
    with pytest.raises(SagaDefinitionError):
        await saga.run({})
    assert ran == []


async def test_non_json_context_is_refused_before_any_step(storage: object) -> None:
    ran = []

    async def step(ctx: dict[str, Any]) -> None:
        ran.append(1)

    saga = Saga(name="ctx").add_step("a", step)
    with pytest.raises(SagaDefinitionError, match="not JSON-serialisable"):
        await saga.run({"when": object()})
    with pytest.raises(SagaDefinitionError, match="must be a dict"):
        await saga.run([1, 2])  # type: ignore[arg-type]
    assert ran == []


class DeclaredSaga(Saga):
    saga_name = "declared-order"

    @action("reserve")
    async def reserve(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return {"reservation": 7}

    @compensate("reserve")
    async def release(self, ctx: dict[str, Any]) -> None:
        return None

    @action("charge", max_retries=2)
    async def charge(self, ctx: dict[str, Any]) -> None:
        return None

    @action("email", depends_on=["reserve"])
    def email(self, ctx: dict[str, Any]) -> None:
        return None


def test_declarative_steps_follow_class_order() -> None:
    saga = DeclaredSaga()
    assert [s.name for s in saga.steps] == ["reserve", "charge", "email"]
    assert saga.graph.deps == {"reserve": (), "charge": ("reserve",), "email": ("reserve",)}
    assert saga.step_spec("charge").max_retries == 2
    assert saga.graph.compensable == frozenset({"reserve"})


def test_subclasses_register_themselves() -> None:
    assert isinstance(get_registered("declared-order"), DeclaredSaga)


def test_mixing_add_step_with_decorators_is_refused() -> None:
    with pytest.raises(SagaDefinitionError, match="do not mix"):
        DeclaredSaga().add_step("extra", noop)


def test_compensation_for_unknown_step_is_refused() -> None:
    with pytest.raises(SagaDefinitionError, match="unknown step"):

        class Broken(Saga):
            saga_name = "broken"

            @action("a")
            async def a(self, ctx: dict[str, Any]) -> None: ...

            @compensate("b")
            async def undo_b(self, ctx: dict[str, Any]) -> None: ...


def test_duplicate_declared_steps_are_refused() -> None:
    with pytest.raises(SagaDefinitionError, match="duplicate step name"):

        class Twice(Saga):
            saga_name = "twice"

            @action("a")
            async def a1(self, ctx: dict[str, Any]) -> None: ...

            @action("a")
            async def a2(self, ctx: dict[str, Any]) -> None: ...


def test_register_and_lookup() -> None:
    saga = Saga(name="registered-imperative").add_step("a", noop)
    assert register(saga) is saga
    assert get_registered("registered-imperative") is saga


def test_bad_options() -> None:
    with pytest.raises(SagaDefinitionError, match="failure_strategy"):
        Saga(name="x", failure_strategy="YOLO")
    with pytest.raises(SagaDefinitionError, match="recovery"):
        Saga(name="x", recovery="retry")  # type: ignore[arg-type]


def test_mermaid_draws_steps_and_dashed_compensations() -> None:
    saga = Saga(name="order")
    saga.add_step("reserve", noop, noop)
    saga.add_step("charge", noop, noop)
    saga.add_step("email", noop, depends_on=["reserve"])
    text = saga.to_mermaid()
    assert text.startswith("flowchart TD")
    assert 's0["reserve"]' in text and "s0 --> s1" in text and "s0 --> s2" in text
    assert "s0 -.-> s0_c" in text and "s1_c -.-> s0_c" in text
    assert "s2_c" not in text  # email has no compensation
