"""Which registered definition finishes a saga in flight: the one it started with, or none.

Every saga records the fingerprint (:mod:`sagaz.engine.fingerprint`) and version of the
definition it started with. Recovery, ``resume`` and ``cancel`` finish it with a registered
definition of the same name, chosen by these rules, in order:

1. the saga recorded no fingerprint (it started before sagas recorded one): the newest
   registered definition of its name, as before;
2. a registered definition with the same fingerprint: that one;
3. a registered definition that **declares it compatible**: it lists the saga's version (or
   fingerprint) in ``compatible_with``, every step the saga has started (any status but PENDING)
   exists in it, and each of those steps has a compensation in it exactly when it had one in the
   definition the saga started with. The newest such definition wins;
4. otherwise the saga is **stuck**: nothing guesses. Recovery leaves it untouched and logs what
   differs; ``sagaz sagas check-versions`` and ``sagaz sagas list --status STUCK`` show it; the
   operator registers the old definition again, or migrates the saga explicitly with
   ``sagaz sagas resume ID --definition VERSION``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sagaz.engine.definition import Saga, registered_versions
from sagaz.engine.fingerprint import DefinitionShape, ShapeDiff, shape_of
from sagaz.engine.types import SagaState, StepStatus
from sagaz.storage.base import SagaStorage
from sagaz.storage.control import ControlStorage

__all__ = ["Choice", "candidates_for", "choose", "choose_among", "compatibility_problem",
           "started_steps"]


@dataclass(frozen=True, slots=True)
class Choice:
    """The definition that would run one saga, or why none would."""

    saga_id: str
    saga_name: str
    started_with: str
    """How the definition the saga started with is named: ``order v1 (3f2a...)``."""
    definition: Saga | None
    how: str
    """Why this definition (``same definition``, ``declared compatible``, ...) or, for a stuck
    saga, what differs from each registered definition."""
    registered: tuple[str, ...] = ()
    """The registered definitions of the saga's name (labels)."""

    @property
    def stuck(self) -> bool:
        return self.definition is None

    @property
    def runs_with(self) -> str:
        return "-" if self.definition is None else shape_of(self.definition).label

    def explain(self) -> str:
        if self.definition is None:
            return f"started with {self.started_with}; {self.how}"
        return f"started with {self.started_with}; runs with {self.runs_with} ({self.how})"


def started_steps(state: SagaState) -> list[str]:
    """The steps the saga has started (whatever became of them), sorted."""
    return sorted(n for n, s in state.steps.items() if s.status is not StepStatus.PENDING)


def _started_label(state: SagaState, shape: DefinitionShape | None) -> str:
    if shape is not None:
        return shape.label
    if state.definition_fingerprint is None:
        return f"{state.saga_name} (no recorded fingerprint)"
    version = f" v{state.definition_version}" if state.definition_version is not None else ""
    return f"{state.saga_name}{version} ({state.definition_fingerprint})"


def compatibility_problem(
    state: SagaState, started: DefinitionShape | None, candidate: Saga
) -> str | None:
    """Why ``candidate`` may not finish ``state`` under rule 3, or None if it may."""
    declared = set(candidate.compatible_with)
    if not declared & {state.definition_version, state.definition_fingerprint} - {None}:
        return "not declared compatible"
    shape = shape_of(candidate)
    missing = [n for n in started_steps(state) if shape.step(n) is None]
    if missing:
        return f"declared compatible but lacks started step(s) {', '.join(missing)}"
    if started is None:
        return ("declared compatible, but the shape of the definition the saga started with is "
                "not recorded, so its compensations cannot be compared")
    changed = []
    for name in started_steps(state):
        before, after = started.step(name), shape.step(name)
        if before is None or after is None or before.compensable != after.compensable:
            changed.append(name)
    if changed:
        return ("declared compatible but compensation differs for started step(s) "
                + ", ".join(changed))
    return None


def choose_among(
    state: SagaState, started: DefinitionShape | None, candidates: list[Saga]
) -> Choice:
    """Rules 1-4 of the module docstring (pure: no storage)."""
    label = _started_label(state, started)

    registered = tuple(shape_of(s).label for s in candidates)

    def choice(saga: Saga | None, how: str) -> Choice:
        return Choice(state.saga_id, state.saga_name, label, saga, how, registered)

    if not candidates:
        return choice(None, f"no definition named {state.saga_name!r} is registered; import "
                            "the module that defines it")
    if state.definition_fingerprint is None:
        return choice(candidates[-1], "started before sagas recorded their definition; the "
                                      "newest registered one")
    for saga in candidates:
        if shape_of(saga).fingerprint == state.definition_fingerprint:
            return choice(saga, "same definition")
    problems = []
    for saga in reversed(candidates):
        problem = compatibility_problem(state, started, saga)
        if problem is None:
            return choice(saga, "declared compatible")
        shape = shape_of(saga)
        differs = ShapeDiff.between(started, shape).describe() if started is not None else (
            "shape of the started definition not recorded")
        problems.append(f"{shape.label}: {differs}; {problem}")
    return choice(None, "its definition is not registered; registered: " + " | ".join(problems))


def candidates_for(name: str, extra: Iterable[Saga] = ()) -> list[Saga]:
    """The registered definitions named ``name`` plus those of ``extra``, oldest first, one per
    fingerprint (an ``extra`` one wins)."""
    found = {shape_of(s).fingerprint: s for s in registered_versions(name)}
    for saga in extra:
        if saga.name == name:
            fingerprint = shape_of(saga).fingerprint
            found.pop(fingerprint, None)
            found[fingerprint] = saga
    return list(found.values())


async def choose(storage: SagaStorage, state: SagaState, extra: Iterable[Saga] = ()) -> Choice:
    """The definition that would run ``state`` in this process."""
    started = None
    if state.definition_fingerprint is not None and isinstance(storage, ControlStorage):
        started = await storage.load_definition(state.definition_fingerprint)
    return choose_among(state, started, candidates_for(state.saga_name, extra))
