"""The fingerprint of a saga definition: what recovery needs to know is the same.

A saga in flight must be finished by the definition it started with. What makes two definitions
"the same" for that purpose is their shape: the step names, what each step depends on and which
steps have a compensation. Timeouts, retries and the code inside the functions may change freely
between deployments (they do not change which steps exist or what undoes them); a renamed, added
or removed step, a changed dependency or a compensation added or dropped changes the fingerprint.

The fingerprint is a SHA-256 over a canonical JSON form of the shape (steps sorted by name,
dependencies sorted), so it depends neither on dict order, nor on the process, nor on the order in
which independent steps were added. The definition's ``version`` label is kept next to it, not in
it: two versions with one shape are interchangeable.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sagaz.engine.definition import Saga

__all__ = ["DefinitionShape", "ShapeDiff", "StepShape", "fingerprint_of", "shape_of"]

FINGERPRINT_CHARS = 16
"""Hex digits kept of the SHA-256: 64 bits, plenty to tell the versions of one saga apart."""


@dataclass(frozen=True, slots=True)
class StepShape:
    name: str
    depends_on: tuple[str, ...]
    compensable: bool


@dataclass(frozen=True, slots=True)
class DefinitionShape:
    """The shape of one saga definition, and its fingerprint."""

    saga_name: str
    version: str | None
    steps: tuple[StepShape, ...]
    """Sorted by name."""
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        canonical = json.dumps([[s.name, list(s.depends_on), s.compensable] for s in self.steps],
                               separators=(",", ":"), ensure_ascii=True)
        digest = hashlib.sha256(canonical.encode("ascii")).hexdigest()[:FINGERPRINT_CHARS]
        object.__setattr__(self, "fingerprint", digest)

    @property
    def step_names(self) -> frozenset[str]:
        return frozenset(s.name for s in self.steps)

    def step(self, name: str) -> StepShape | None:
        for step in self.steps:
            if step.name == name:
                return step
        return None

    @property
    def label(self) -> str:
        """``order v2 (3f2a...)``: how logs and the CLI name a definition."""
        version = f" v{self.version}" if self.version is not None else ""
        return f"{self.saga_name}{version} ({self.fingerprint})"

    def to_json(self) -> dict[str, Any]:
        return {"saga_name": self.saga_name, "version": self.version,
                "steps": [{"name": s.name, "depends_on": list(s.depends_on),
                           "compensable": s.compensable} for s in self.steps]}

    @staticmethod
    def from_json(data: dict[str, Any]) -> DefinitionShape:
        return make_shape(data["saga_name"], data.get("version"),
                          [StepShape(s["name"], tuple(s["depends_on"]), bool(s["compensable"]))
                           for s in data["steps"]])


def make_shape(saga_name: str, version: str | None, steps: list[StepShape]) -> DefinitionShape:
    ordered = sorted((StepShape(s.name, tuple(sorted(s.depends_on)), s.compensable)
                      for s in steps), key=lambda s: s.name)
    return DefinitionShape(saga_name, version, tuple(ordered))


def shape_of(saga: Saga) -> DefinitionShape:
    """The shape of ``saga`` (validates it). Computed once per graph: cheap on the hot path."""
    graph = saga.graph
    cached = saga._shape_cache
    if cached is not None and cached[0] is graph and cached[1].version == saga.version:
        return cached[1]
    shape = make_shape(saga.name, saga.version,
                       [StepShape(name, graph.deps[name], name in graph.compensable)
                        for name in graph.order])
    saga._shape_cache = (graph, shape)
    return shape


def fingerprint_of(saga: Saga) -> str:
    return shape_of(saga).fingerprint


@dataclass(frozen=True, slots=True)
class ShapeDiff:
    """What changed from one shape (``old``) to another (``new``)."""

    removed: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    dependencies_changed: tuple[str, ...] = ()
    compensation_added: tuple[str, ...] = ()
    compensation_removed: tuple[str, ...] = ()

    @property
    def same(self) -> bool:
        return not (self.removed or self.added or self.dependencies_changed
                    or self.compensation_added or self.compensation_removed)

    def describe(self) -> str:
        """``removed step charge; added steps charge_card, notify`` (or ``same shape``)."""
        parts = []
        for label, names in (("removed", self.removed), ("added", self.added),
                             ("dependencies changed for", self.dependencies_changed),
                             ("compensation added to", self.compensation_added),
                             ("compensation removed from", self.compensation_removed)):
            if names:
                noun = "step" if len(names) == 1 else "steps"
                parts.append(f"{label} {noun} {', '.join(names)}")
        return "; ".join(parts) or "same shape"

    @staticmethod
    def between(old: DefinitionShape, new: DefinitionShape) -> ShapeDiff:
        old_names, new_names = old.step_names, new.step_names
        common = sorted(old_names & new_names)
        deps_changed, comp_added, comp_removed = [], [], []
        for name in common:
            before, after = old.step(name), new.step(name)
            assert before is not None and after is not None
            if before.depends_on != after.depends_on:
                deps_changed.append(name)
            if after.compensable and not before.compensable:
                comp_added.append(name)
            if before.compensable and not after.compensable:
                comp_removed.append(name)
        return ShapeDiff(tuple(sorted(old_names - new_names)), tuple(sorted(new_names - old_names)),
                         tuple(deps_changed), tuple(comp_added), tuple(comp_removed))
