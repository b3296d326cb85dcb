"""Retries: the pure backoff policy (how long to wait before the next attempt) and the engine's
one retry loop, which asks the plan whether to attempt again."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from sagaz.engine.plan import GiveUp, RetryAfter

if TYPE_CHECKING:
    from sagaz.engine.types import StepStatus

__all__ = ["Attempted", "RetryPolicy", "attempt_with_retries"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with "equal jitter".

    The delay before retry ``n`` (1-based) is ``d/2 + U(0, d/2)`` with
    ``d = min(max_delay, base_delay * multiplier ** (n - 1))``: it grows exponentially, never
    exceeds ``max_delay``, and the jitter spreads retries of sagas that failed together.
    The random source is injectable so tests can pin the schedule.
    """

    base_delay: float = 0.05
    max_delay: float = 5.0
    multiplier: float = 2.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("RetryPolicy delays must be >= 0")
        if self.multiplier < 1:
            raise ValueError("RetryPolicy.multiplier must be >= 1")

    def delay(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        if retry < 1:
            raise ValueError("retry numbers start at 1")
        ceiling = min(self.max_delay, self.base_delay * self.multiplier ** (retry - 1))
        if not self.jitter:
            return ceiling
        half = ceiling / 2
        return half + rand() * half


@dataclass(slots=True)
class Attempted(Generic[T]):
    """How :func:`attempt_with_retries` ended: a ``value``, or the last ``error`` and the
    status the step gave up with."""

    value: T | None
    attempts: int
    error: Exception | None = None
    gave_up: StepStatus | None = None


async def attempt_with_retries(
    attempt: Callable[[int], Awaitable[T]],
    verdict: Callable[[int, Exception], RetryAfter | GiveUp],
    policy: RetryPolicy,
    on_failure: Callable[[int, Exception, bool], None] | None = None,
) -> Attempted[T]:
    """The one retry loop of the engine (actions and compensations alike): call
    ``attempt(n)`` until it returns or ``verdict`` (a decision of the plan) gives up, sleeping the
    policy's backoff between attempts. ``on_failure(n, error, final)`` sees every failed attempt.
    Cancellation propagates: whoever cancels decides what it means."""
    number = 0
    while True:
        number += 1
        try:
            return Attempted(await attempt(number), number)
        except Exception as exc:
            decided = verdict(number, exc)
            final = isinstance(decided, GiveUp)
            if on_failure is not None:
                on_failure(number, exc, final)
            if isinstance(decided, GiveUp):
                return Attempted(None, number, exc, decided.status)
            await asyncio.sleep(policy.delay(decided.retry))
