"""Helpers for testing sagas. :class:`ManualClock` is a clock that moves only when the test
says so: give it to the engine (``SagaConfig(clock=clock)``) and to ``sagaz.Worker``/resume
calls, then ``clock.advance(3600)`` fires an hour of timers at once, without sleeping."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import TYPE_CHECKING

from sagaz.engine.types import SagaStatus, StepStatus

if TYPE_CHECKING:
    from sagaz.engine.handle import SagaHandle

__all__ = ["ManualClock", "until_waiting"]


class ManualClock:
    """A controllable clock. ``now()`` is ``start`` plus what was advanced; ``sleep(s)`` returns
    when the clock has been advanced past its deadline."""

    def __init__(self, start: float = 1_800_000_000.0):
        self._now = float(start)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        await future

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has come."""
        if seconds < 0:
            raise ValueError("a clock only moves forward")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    @property
    def sleepers(self) -> int:
        """How many sleeps are pending (lets a test wait until the engine sleeps)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())


async def until_waiting(handle: SagaHandle, step: str) -> None:
    """Return once the saga is parked on wait ``step`` (stored WAITING with that wait reached
    and not ended), so that a test advances the clock or signals at the right moment. Bound it
    with ``asyncio.timeout(...)`` if the saga may never get there."""
    storage = handle.config.write_storage
    while True:
        state = await storage.load(handle.saga_id)
        if state is not None and state.status is SagaStatus.WAITING:
            reached = state.steps.get(step)
            if (reached is not None and reached.status is StepStatus.PENDING
                    and reached.started_at is not None):
                return
        await asyncio.sleep(0.005)
