"""Pure retry policy: how long to wait before the next attempt. No I/O, no clock."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RetryPolicy"]


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
