"""The engine's clock: what time it is and how to sleep, for durable waits and timers. The
system clock by default; :class:`sagaz.testing.ManualClock` lets tests advance time instead of
sleeping. Given to the engine through :class:`~sagaz.config.SagaConfig` (``clock=``)."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` have passed on this clock."""
        ...


class SystemClock:
    """Wall-clock time (timers are stored as epoch seconds, so they survive restarts)."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))
