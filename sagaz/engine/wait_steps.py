"""The definition side of durable waits: ``Saga.add_wait``, ``Saga.add_delay`` and ``@wait``
build wait steps (:class:`~sagaz.engine.plan.WaitSpec`) that the plan parks the saga on."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sagaz.engine.plan import WaitSpec
from sagaz.errors import SagaDefinitionError
from sagaz.values import UnstorableValueError, check_json

__all__ = ["check_wait", "no_hook", "wait"]

OnTimeout = str | dict[str, Any]


async def no_hook(ctx: Any) -> None:
    """The action of a wait step without a hook: the signal's payload is the result."""
    return None


def check_wait(
    saga_name: str | None, name: str, signal: object, timeout: object, on_timeout: object
) -> WaitSpec:
    """The validated spec of a wait, or a :class:`SagaDefinitionError` that says what to fix."""
    if signal is not None and (not isinstance(signal, str) or not signal):
        raise SagaDefinitionError(
            f"wait {name!r}: signal must be a non-empty signal name, got {signal!r}",
            saga_name=saga_name, step=name)
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                or not timeout > 0):
        raise SagaDefinitionError(
            f"wait {name!r}: timeout must be a number of seconds > 0, got {timeout!r}",
            saga_name=saga_name, step=name)
    if signal is None and timeout is None:
        raise SagaDefinitionError(
            f"wait {name!r} waits for nothing: give it a signal=..., a timeout=..., or both",
            saga_name=saga_name, step=name)
    if on_timeout == "compensate":
        continue_with = None
    elif isinstance(on_timeout, dict):
        try:
            check_json(on_timeout, "on_timeout")
        except (UnstorableValueError, TypeError, ValueError) as exc:
            raise SagaDefinitionError(
                f"wait {name!r}: on_timeout must hold plain JSON values ({exc})",
                saga_name=saga_name, step=name) from None
        continue_with = dict(on_timeout)
    else:
        raise SagaDefinitionError(
            f"wait {name!r}: on_timeout must be 'compensate' (the step fails and the saga "
            f"compensates) or a dict merged into the context to go on with, got {on_timeout!r}",
            saga_name=saga_name, step=name)
    return WaitSpec(signal, None if timeout is None else float(timeout), continue_with)


def wait(
    name: str,
    *,
    signal: str | None = None,
    timeout: float | None = None,
    on_timeout: OnTimeout = "compensate",
    depends_on: Iterable[str] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a method of a :class:`~sagaz.engine.definition.Saga` subclass as a durable wait step
    (the declarative ``Saga.add_wait``). The method runs when the signal arrives, with the
    payload already in the context; what it returns (a dict) is merged too."""
    from sagaz.engine.definition import mark_step

    spec = check_wait(None, name, signal, timeout, on_timeout)
    return mark_step(name, depends_on=depends_on, wait=spec)
