"""Saga definitions: the imperative ``Saga.add_step`` API, the ``@action``/``@compensate``
decorators, graph validation and the registry that recovery uses to find definitions by name."""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from sagaz.engine.fingerprint import fingerprint_of
from sagaz.engine.plan import Graph, WaitSpec
from sagaz.engine.retry import RetryPolicy
from sagaz.engine.types import FailureStrategy, SagaResult, SagaStatus
from sagaz.errors import SagaDefinitionError

if TYPE_CHECKING:
    from sagaz.config import SagaConfig
    from sagaz.engine.fingerprint import DefinitionShape
    from sagaz.engine.handle import SagaHandle

__all__ = ["Saga", "StepSpec", "action", "compensate", "get_registered", "register",
           "registered_versions"]

logger = logging.getLogger(__name__)

StepFn = Callable[..., Any]
RecoveryMode = Literal["compensate", "resume"]

_ACTION_ATTR = "__sagaz_action__"
_COMPENSATE_ATTR = "__sagaz_compensate__"
_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One step of a saga definition."""

    name: str
    action: StepFn
    compensation: StepFn | None
    depends_on: tuple[str, ...] | None
    """None means "after the previously added step"; () makes a root."""
    max_retries: int = 0
    timeout: float | None = None
    retry_policy: RetryPolicy | None = None
    is_async: bool = False
    compensation_is_async: bool = False
    wait: WaitSpec | None = None
    """Set for a durable wait step (its action is the hook run when the signal arrives)."""


def _check_step_args(
    saga_name: str | None, name: object, fn: object, comp: object, max_retries: object,
    timeout: object, depends_on: object,
) -> None:
    if not isinstance(name, str) or not name:
        raise SagaDefinitionError(f"step names must be non-empty strings, got {name!r}",
                                  saga_name=saga_name)
    if not callable(fn):
        raise SagaDefinitionError(f"step {name!r}: action must be callable, got {fn!r}",
                                  saga_name=saga_name, step=name)
    if comp is not None and not callable(comp):
        raise SagaDefinitionError(
            f"step {name!r}: compensation must be callable or None, got {comp!r}",
            saga_name=saga_name, step=name)
    if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
        raise SagaDefinitionError(
            f"step {name!r}: max_retries must be an integer >= 0, got {max_retries!r}",
            saga_name=saga_name, step=name)
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise SagaDefinitionError(
            f"step {name!r}: timeout must be a number of seconds > 0, got {timeout!r}",
            saga_name=saga_name, step=name)
    if depends_on is not None and (
        isinstance(depends_on, str)
        or not isinstance(depends_on, Iterable)
    ):
        raise SagaDefinitionError(
            f"step {name!r}: depends_on must be a list of step names, got {depends_on!r} "
            f"(write depends_on=[{depends_on!r}] for a single dependency)",
            saga_name=saga_name, step=name)


def action(
    name: str,
    *,
    depends_on: Iterable[str] | None = None,
    max_retries: int = 0,
    timeout: float | None = None,
    retry_policy: RetryPolicy | None = None,
) -> Callable[[StepFn], StepFn]:
    """Mark a method of a :class:`Saga` subclass as the action of step ``name``.

    Without ``depends_on`` the step runs after the step defined just above it in the class.
    """
    return mark_step(name, depends_on=depends_on, max_retries=max_retries, timeout=timeout,
                     retry_policy=retry_policy)


def mark_step(
    name: str, *, depends_on: Iterable[str] | None = None, max_retries: int = 0,
    timeout: float | None = None, retry_policy: RetryPolicy | None = None,
    wait: WaitSpec | None = None,
) -> Callable[[StepFn], StepFn]:
    """The decorator behind :func:`action` and :func:`~sagaz.engine.wait_steps.wait`."""
    deps = tuple(depends_on) if depends_on is not None else None

    def mark(fn: StepFn) -> StepFn:
        _check_step_args(None, name, fn, None, max_retries, timeout, depends_on)
        setattr(fn, _ACTION_ATTR, (name, deps, max_retries, timeout, retry_policy, wait))
        return fn

    return mark


def compensate(name: str) -> Callable[[StepFn], StepFn]:
    """Mark a method of a :class:`Saga` subclass as the compensation of step ``name``."""

    def mark(fn: StepFn) -> StepFn:
        if not callable(fn):
            raise SagaDefinitionError(f"@compensate({name!r}) must decorate a callable")
        setattr(fn, _COMPENSATE_ATTR, name)
        return fn

    return mark


def _is_async(fn: StepFn) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - async callable objects
    )


class Saga:
    """A named multi-step transaction with compensations.

    Build it imperatively with :meth:`add_step`, or declaratively by subclassing and decorating
    methods with :func:`action` and :func:`compensate`. The name must stay stable across restarts:
    recovery finds the definition of an interrupted saga by it.

    ``recovery`` says what recovery does with a saga whose executor died mid-way: ``"compensate"``
    (default) rolls it back, ``"resume"`` runs the remaining steps forward.

    ``version`` labels this definition (each saga records the version and the fingerprint of the
    definition it started with, see :mod:`sagaz.engine.versions`); ``compatible_with`` lists the
    versions (or fingerprints) whose sagas in flight this definition may finish.
    """

    saga_name: ClassVar[str | None] = None
    saga_version: ClassVar[str | None] = None
    compatible_versions: ClassVar[tuple[str, ...]] = ()
    failure_strategy: FailureStrategy = FailureStrategy.FAIL_FAST
    grace_seconds: float = 2.0
    timeout: float | None = None
    recovery: RecoveryMode = "compensate"
    retry_policy: RetryPolicy = RetryPolicy()

    _declared_steps: ClassVar[tuple[StepSpec, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._declared_steps = _collect_declared_steps(cls)
        if cls.saga_name and cls._declared_steps:
            _registry[cls.saga_name] = cls
            _classes.setdefault(cls.saga_name, []).append(cls)

    def __init__(
        self,
        name: str | None = None,
        *,
        failure_strategy: FailureStrategy | str | None = None,
        grace_seconds: float | None = None,
        timeout: float | None = _UNSET,
        recovery: RecoveryMode | None = None,
        retry_policy: RetryPolicy | None = None,
        config: SagaConfig | None = None,
        version: str | None = None,
        compatible_with: Iterable[str] = (),
    ):
        name = name or type(self).saga_name
        if not name or not isinstance(name, str):
            raise SagaDefinitionError(
                "a saga needs a name: Saga(name='order') or a `saga_name = 'order'` class "
                "attribute; it must stay stable across restarts so recovery can find it")
        self.name: str = name
        if failure_strategy is not None:
            try:
                self.failure_strategy = FailureStrategy(failure_strategy)
            except ValueError:
                choices = ", ".join(s.value for s in FailureStrategy)
                raise SagaDefinitionError(
                    f"unknown failure_strategy {failure_strategy!r}; use one of {choices}",
                    saga_name=name) from None
        if grace_seconds is not None:
            if grace_seconds < 0:
                raise SagaDefinitionError("grace_seconds must be >= 0", saga_name=name)
            self.grace_seconds = grace_seconds
        if timeout is not _UNSET:
            self.timeout = timeout
        if self.timeout is not None and self.timeout <= 0:
            raise SagaDefinitionError("timeout must be > 0 seconds or None", saga_name=name)
        if recovery is not None:
            self.recovery = recovery
        if self.recovery not in ("compensate", "resume"):
            raise SagaDefinitionError(
                f"recovery must be 'compensate' or 'resume', got {self.recovery!r}",
                saga_name=name)
        if retry_policy is not None:
            self.retry_policy = retry_policy
        self.config = config
        self.version: str | None = version if version is not None else type(self).saga_version
        if self.version is not None and (not isinstance(self.version, str) or not self.version):
            raise SagaDefinitionError(
                f"version must be a non-empty string such as '2', got {self.version!r}",
                saga_name=name)
        if isinstance(compatible_with, str):
            raise SagaDefinitionError(
                f"compatible_with must be a list of versions, got {compatible_with!r} (write "
                f"compatible_with=[{compatible_with!r}])", saga_name=name)
        self.compatible_with: tuple[str, ...] = (
            *type(self).compatible_versions, *(str(v) for v in compatible_with))
        self._shape_cache: tuple[Graph, DefinitionShape] | None = None
        self._steps: list[StepSpec] = [self._bind(spec) for spec in type(self)._declared_steps]
        self._declarative = bool(self._steps)
        self._graph: Graph | None = None
        self._by_name: dict[str, StepSpec] = {s.name: s for s in self._steps}

    def _bind(self, spec: StepSpec) -> StepSpec:
        act = spec.action.__get__(self, type(self))
        comp = spec.compensation.__get__(self, type(self)) if spec.compensation else None
        return StepSpec(spec.name, act, comp, spec.depends_on, spec.max_retries, spec.timeout,
                        spec.retry_policy, spec.is_async, spec.compensation_is_async, spec.wait)

    # -- building -------------------------------------------------------------------------------

    def add_step(
        self,
        name: str,
        action: StepFn,
        compensation: StepFn | None = None,
        *,
        depends_on: Iterable[str] | None = None,
        max_retries: int = 0,
        timeout: float | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> Saga:
        """Add a step. Without ``depends_on`` it runs after the previously added step;
        ``depends_on=[]`` makes it a root that starts immediately. Returns the saga (chainable)."""
        if self._declarative:
            raise SagaDefinitionError(
                f"saga {self.name!r} declares its steps with @action; do not mix add_step() "
                "with decorators: pick one style per saga", saga_name=self.name, step=name)
        return self._add(name, action, compensation, depends_on, max_retries=max_retries,
                         timeout=timeout, retry_policy=retry_policy)

    def _add(
        self, name: str, action: StepFn, compensation: StepFn | None,
        depends_on: Iterable[str] | None, *, max_retries: int = 0, timeout: float | None = None,
        retry_policy: RetryPolicy | None = None, wait: WaitSpec | None = None,
    ) -> Saga:
        if self._declarative:
            raise SagaDefinitionError(
                f"saga {self.name!r} declares its steps with decorators; do not mix add_*() "
                "with them: pick one style per saga", saga_name=self.name, step=name)
        _check_step_args(self.name, name, action, compensation, max_retries, timeout, depends_on)
        if name in self._by_name:
            raise SagaDefinitionError(f"duplicate step name {name!r} in saga {self.name!r}",
                                      saga_name=self.name, step=name)
        spec = StepSpec(
            name, action, compensation,
            tuple(depends_on) if depends_on is not None else None,
            max_retries, timeout, retry_policy, _is_async(action),
            compensation is not None and _is_async(compensation), wait,
        )
        self._steps.append(spec)
        self._by_name[name] = spec
        self._graph = None
        return self

    def add_wait(
        self,
        name: str,
        *,
        signal: str | None = None,
        timeout: float | None = None,
        on_timeout: str | dict[str, Any] = "compensate",
        depends_on: Iterable[str] | None = None,
    ) -> Saga:
        """Add a durable wait: the saga is stored WAITING (no process held) until ``signal`` is
        sent to it (:func:`sagaz.signal`; its payload merges into the context) or ``timeout``
        seconds pass. On timeout the step fails and the saga compensates, unless ``on_timeout``
        is a dict: it is merged into the context and the saga goes on. A signal sent before the
        saga reaches the wait is kept and consumed when it does."""
        from sagaz.engine.wait_steps import check_wait, no_hook

        spec = check_wait(self.name, name, signal, timeout, on_timeout)
        return self._add(name, no_hook, None, depends_on, wait=spec)

    def add_delay(
        self, name: str, *, seconds: float, depends_on: Iterable[str] | None = None
    ) -> Saga:
        """Add a durable delay: the saga is stored WAITING for ``seconds``, then goes on."""
        from sagaz.engine.wait_steps import check_wait, no_hook

        spec = check_wait(self.name, name, None, seconds, {})
        return self._add(name, no_hook, None, depends_on, wait=spec)

    # -- inspection -----------------------------------------------------------------------------

    @property
    def steps(self) -> list[StepSpec]:
        return list(self._steps)

    def step_spec(self, name: str) -> StepSpec:
        return self._by_name[name]

    @property
    def graph(self) -> Graph:
        """The validated dependency graph (raises :class:`SagaDefinitionError` if invalid)."""
        if self._graph is None:
            self._graph = _build_graph(self.name, self._steps)
        return self._graph

    def validate(self) -> None:
        """Check the whole definition now; :meth:`run` does it before any step runs."""
        _ = self.graph

    def to_mermaid(self) -> str:
        """A Mermaid flowchart: steps and dependencies solid, compensations dashed."""
        graph = self.graph
        ids = {name: f"s{i}" for i, name in enumerate(graph.order)}
        lines = ["flowchart TD"]
        for name in graph.order:
            lines.append(f'    {ids[name]}["{_mermaid_label(name)}"]')
        for name in graph.order:
            for dep in graph.deps[name]:
                lines.append(f"    {ids[dep]} --> {ids[name]}")
        for name in graph.order:
            if name in graph.compensable:
                lines.append(f'    {ids[name]}_c(["undo {_mermaid_label(name)}"])')
                lines.append(f"    {ids[name]} -.-> {ids[name]}_c")
        for name in graph.order:
            if name not in graph.compensable:
                continue
            for dep in graph.deps[name]:
                if dep in graph.compensable:
                    lines.append(f"    {ids[name]}_c -.-> {ids[dep]}_c")
        return "\n".join(lines) + "\n"

    # -- running --------------------------------------------------------------------------------

    async def run(
        self,
        context: dict[str, Any] | None = None,
        *,
        saga_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Run the saga to its end and return the final context.

        Raises :class:`~sagaz.errors.SagaFailedError` (after compensating) if a step failed.
        Starting the same ``saga_id`` or ``idempotency_key`` twice runs the steps once and returns
        the first run's outcome.
        """
        from sagaz.engine.outcomes import failure_error
        from sagaz.engine.starting import run_saga

        _remember(self)  # lets recovery in this process find it
        result = await run_saga(self, context, saga_id=saga_id, idempotency_key=idempotency_key)
        if result.status is SagaStatus.COMPLETED:
            return result.context
        raise failure_error(result)

    async def execute(
        self,
        context: dict[str, Any] | None = None,
        *,
        saga_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> SagaResult:
        """Like :meth:`run` but returns a :class:`SagaResult` instead of raising on step failure."""
        from sagaz.engine.starting import run_saga

        _remember(self)
        return await run_saga(self, context, saga_id=saga_id, idempotency_key=idempotency_key)

    async def start(
        self,
        context: dict[str, Any] | None = None,
        *,
        saga_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> SagaHandle:
        """Start the saga and return once it is durably created, without awaiting its end:
        ``handle.saga_id``, ``await handle.status()``, ``await handle.result()``. It runs on in
        the background of this process; the same ids as :meth:`run` join an existing saga."""
        from sagaz.engine.handle import start

        _remember(self)
        return await start(self, context, saga_id=saga_id, idempotency_key=idempotency_key)

    def __repr__(self) -> str:
        version = f" version={self.version!r}" if self.version is not None else ""
        return f"<Saga {self.name!r}{version} steps={[s.name for s in self._steps]}>"


def _mermaid_label(name: str) -> str:
    return name.replace('"', "#quot;")


def _collect_declared_steps(cls: type) -> tuple[StepSpec, ...]:
    actions: dict[str, tuple[StepFn, Any]] = {}
    comps: dict[str, StepFn] = {}
    saga_name = getattr(cls, "saga_name", None)
    for klass in reversed(cls.__mro__):
        for attr in vars(klass).values():
            marked = getattr(attr, _ACTION_ATTR, None)
            if marked is not None:
                step = marked[0]
                if step in actions and actions[step][0] is not attr and klass is cls:
                    raise SagaDefinitionError(
                        f"duplicate step name {step!r}: two @action methods use it",
                        saga_name=saga_name, step=step)
                actions[step] = (attr, marked)
            target = getattr(attr, _COMPENSATE_ATTR, None)
            if target is not None:
                if target in comps and comps[target] is not attr and klass is cls:
                    raise SagaDefinitionError(
                        f"step {target!r} has two @compensate methods", saga_name=saga_name,
                        step=target)
                comps[target] = attr
    unknown = sorted(set(comps) - set(actions))
    if unknown:
        raise SagaDefinitionError(
            f"@compensate names unknown step(s) {unknown}; known steps: {sorted(actions)}",
            saga_name=saga_name, step=unknown[0])
    specs = []
    for step, (fn, (_, deps, retries, timeout, policy, wait)) in actions.items():
        comp = comps.get(step)
        if wait is not None and comp is not None:
            raise SagaDefinitionError(f"wait {step!r} cannot have a compensation: it does "
                                      "nothing to undo", saga_name=saga_name, step=step)
        specs.append(StepSpec(step, fn, comp, deps, retries, timeout, policy, _is_async(fn),
                              comp is not None and _is_async(comp), wait))
    return tuple(specs)


def _build_graph(saga_name: str, steps: list[StepSpec]) -> Graph:
    if not steps:
        raise SagaDefinitionError(f"saga {saga_name!r} has no steps", saga_name=saga_name)
    names = [s.name for s in steps]
    known = set(names)
    deps: dict[str, tuple[str, ...]] = {}
    previous: str | None = None
    for spec in steps:
        if spec.depends_on is None:
            deps[spec.name] = (previous,) if previous is not None else ()
        else:
            for dep in spec.depends_on:
                if dep not in known:
                    raise SagaDefinitionError(
                        f"step {spec.name!r} depends on unknown step {dep!r}; "
                        f"known steps: {names}", saga_name=saga_name, step=spec.name)
                if dep == spec.name:
                    raise SagaDefinitionError(f"step {spec.name!r} depends on itself",
                                              saga_name=saga_name, step=spec.name)
            deps[spec.name] = tuple(dict.fromkeys(spec.depends_on))
        previous = spec.name
    cycle = _find_cycle(names, deps)
    if cycle:
        raise SagaDefinitionError(
            f"saga {saga_name!r} has a dependency cycle: {' -> '.join(cycle)}",
            saga_name=saga_name, step=cycle[0])
    return Graph.build(names, deps, {s.name for s in steps if s.compensation is not None},
                       {s.name: s.wait for s in steps if s.wait is not None})


def _find_cycle(names: list[str], deps: dict[str, tuple[str, ...]]) -> list[str] | None:
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(names, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        color[node] = grey
        stack.append(node)
        for dep in deps[node]:
            if color[dep] == grey:
                return [*stack[stack.index(dep):], dep]
            if color[dep] == white:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        color[node] = black
        return None

    for name in names:
        if color[name] == white:
            found = visit(name)
            if found:
                return found
    return None


# -- registry -----------------------------------------------------------------------------------

# The newest definition registered under each name, and every definition registered under it by
# fingerprint (several versions may be registered at once: sagas in flight finish with the one
# they started with). Registered classes are built on first use.
_registry: dict[str, Saga | type[Saga]] = {}
_versions: dict[str, dict[str, Saga]] = {}
_classes: dict[str, list[type[Saga]]] = {}
_remembered: weakref.WeakSet[Saga] = weakref.WeakSet()
_built: dict[type[Saga], Saga] = {}


def register(saga: Saga | type[Saga]) -> Saga | type[Saga]:
    """Make a saga definition findable by name, so recovery can finish its interrupted runs.

    Register every version still needed: a saga in flight is finished by the definition (same
    fingerprint) it started with; of two with one fingerprint, the later registration wins.
    ``Saga`` subclasses with a ``saga_name`` register themselves. Returns its argument, so it
    also works as a class decorator.
    """
    name = saga.name if isinstance(saga, Saga) else saga.saga_name
    if not name:
        raise SagaDefinitionError("only sagas with a name can be registered")
    _registry[name] = saga
    if isinstance(saga, Saga):
        saga.validate()
        _remembered.add(saga)
        known = _versions.setdefault(name, {})
        fingerprint = fingerprint_of(saga)
        known.pop(fingerprint, None)  # re-inserted last: the newest registration
        known[fingerprint] = saga
    elif saga not in _classes.setdefault(name, []):
        _classes[name].append(saga)
    return saga


def _remember(saga: Saga) -> None:
    """A saga that runs becomes findable by recovery in this process, next to (not instead of)
    the definitions registered under its name."""
    if saga in _remembered:
        return
    _remembered.add(saga)
    _registry.setdefault(saga.name, saga)
    _versions.setdefault(saga.name, {}).setdefault(fingerprint_of(saga), saga)


def _instance(name: str, entry: Saga | type[Saga]) -> Saga:
    if isinstance(entry, Saga):
        return entry
    instance = _built.get(entry)
    if instance is None:
        instance = _built[entry] = entry()
    if _registry.get(name) is entry:
        _registry[name] = instance
    return instance


def get_registered(name: str) -> Saga | None:
    """The newest registered definition for ``name``, or None."""
    found = _registry.get(name)
    return None if found is None else _instance(name, found)


def registered_versions(name: str) -> list[Saga]:
    """Every registered definition named ``name`` (one per fingerprint), oldest first."""
    for cls in _classes.pop(name, []):
        instance = _instance(name, cls)
        _versions.setdefault(name, {})[fingerprint_of(instance)] = instance
    return list(_versions.get(name, {}).values())


def registered_names() -> list[str]:
    return sorted(_registry)
