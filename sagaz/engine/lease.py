"""Leases: an executor's time-limited claim on the sagas it runs.

Every commit extends the lease of its saga; for steps that run longer than a lease, a keeper renews
the leases of all active sagas of one (storage, owner) in a single batched call every third of the
lease. When an executor dies, its leases expire and recovery takes the sagas over.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import uuid
import weakref

from sagaz.storage.base import SagaStorage

__all__ = ["LeaseKeeper", "new_owner", "process_owner"]

logger = logging.getLogger(__name__)

_process_owner: tuple[int, str] | None = None
_counter = itertools.count(1)


def process_owner() -> str:
    """The lease owner id of this process (recomputed after fork)."""
    global _process_owner
    pid = os.getpid()
    if _process_owner is None or _process_owner[0] != pid:
        _process_owner = (pid, f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:8]}")
    return _process_owner[1]


def new_owner(purpose: str) -> str:
    """A distinct owner id, e.g. for one recovery pass: it fences out the original executor even
    when that executor lives in this same process."""
    return f"{process_owner()}:{purpose}-{next(_counter)}"


class LeaseKeeper:
    """Renews the leases of one owner's active sagas. Uses timer callbacks rather than a
    long-lived task, so an idle keeper leaves nothing pending on the event loop."""

    def __init__(self, storage: SagaStorage, owner: str, lease_seconds: float):
        self.storage = storage
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.active: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._renewing: asyncio.Task[None] | None = None

    def add(self, saga_id: str) -> None:
        self.active.add(saga_id)
        if self._timer is None:
            self._schedule()

    def discard(self, saga_id: str) -> None:
        self.active.discard(saga_id)
        if not self.active and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.lease_seconds / 3, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if not self.active:
            return
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.get_running_loop().create_task(self._renew(list(self.active)))
        self._schedule()

    async def _renew(self, saga_ids: list[str]) -> None:
        try:
            lost = await self.storage.renew_leases(self.owner, saga_ids, self.lease_seconds)
        except Exception:
            # A missed renewal is not fatal: the next tick retries well before the lease ends.
            logger.warning("lease renewal failed", extra={"action": "lease_renew_failed"},
                           exc_info=True)
            return
        # A saga that finished while the renewal was on its way has released its lease: it is
        # done, not lost, and has left the active set by now.
        lost = [saga_id for saga_id in lost if saga_id in self.active]
        if lost:
            # The executors find out on their next commit, which the storage then refuses.
            logger.warning("leases lost to recovery: %s", lost, extra={"action": "lease_lost"})


_keepers: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[int, str], LeaseKeeper]
] = weakref.WeakKeyDictionary()


def keeper_for(storage: SagaStorage, owner: str, lease_seconds: float) -> LeaseKeeper:
    """The keeper of (storage, owner) on the running loop."""
    loop = asyncio.get_running_loop()
    per_loop = _keepers.get(loop)
    if per_loop is None:
        per_loop = _keepers[loop] = {}
    key = (id(storage), owner)
    keeper = per_loop.get(key)
    if keeper is None or keeper.storage is not storage or keeper.lease_seconds != lease_seconds:
        keeper = per_loop[key] = LeaseKeeper(storage, owner, lease_seconds)
    return keeper
