"""Replicas that can never stream again, found and rebuilt by the supervisor.

A replica is beyond repair by a restart when the WAL it needs is gone from the primary:

* its replication slot was lost: it fell further behind than ``max_slot_wal_keep_size`` and a
  checkpoint of the primary invalidated the slot (``pg_replication_slots.wal_status = 'lost'``,
  see :mod:`sagaz.ha.wal_settings`);
* or its log says the primary removed a WAL segment it asked for (``requested WAL segment ...
  has already been removed``): it streamed without a slot, or its slot was dropped.

:class:`LostSlotHealer` rebuilds each such replica with :func:`sagaz.ha.failover.rebuild` (a new
slot and a fresh pg_basebackup, as ``sagaz ha rejoin`` does), in a thread, so the supervisor's
passes over the read pool go on meanwhile (the replica is out of pgbouncer-ro while it is
rebuilt). It logs each incident once when it starts the rebuild and once when it ends; a rebuild
that fails is tried again after a growing delay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from sagaz.engine.retry import RetryPolicy
from sagaz.errors import SagazError
from sagaz.ha.dirlock import DirectoryBusy, directory_lock
from sagaz.ha.failover import rebuild
from sagaz.ha.health import read_slots
from sagaz.ha.local import LocalCluster

__all__ = ["LostSlotHealer", "REBUILD_RETRY", "unrecoverable_replicas"]

logger = logging.getLogger(__name__)

REBUILD_RETRY = RetryPolicy(base_delay=10.0, max_delay=300.0)
"""Delay before another attempt at a rebuild that failed (the primary busy, the disk full...)."""

# What a standby logs when the primary no longer has the WAL it asks for.
_WAL_REMOVED = "has already been removed"


def unrecoverable_replicas(cluster: LocalCluster,
                           log_offsets: dict[str, int] | None = None) -> dict[str, str]:
    """The replicas that need a new base backup, each with the reason. ``log_offsets`` (node ->
    bytes of its log already read, updated here) enables the log check: only lines written since
    the last call count, so an incident that was dealt with is not seen twice."""
    found = {s.name: f"its replication slot was lost (it fell more than max_slot_wal_keep_size, "
                     f"{cluster.state.max_slot_wal_keep_size}, behind the primary)"
             for s in read_slots(cluster) if s.lost and s.name in cluster.state.replicas}
    if log_offsets is None:
        return found
    for name in cluster.state.replicas:
        node = cluster.node(name)
        if name in found or not node.running:
            log_offsets.pop(name, None)
            continue
        text = _read_from(node.log_path, log_offsets, name)
        if any(_WAL_REMOVED in line and "WAL stream" in line for line in text.splitlines()):
            found[name] = "the primary no longer has the WAL it asks for"
    return found


def _read_from(path: Path, offsets: dict[str, int], key: str) -> str:
    """What was appended to a node's log since the last read (nothing on the first: what was
    there before the supervisor looked is history)."""
    try:
        size = path.stat().st_size
        start = offsets.get(key, size)
        if start > size:
            start = 0  # the log was replaced
        with path.open(errors="replace") as log:
            log.seek(start)
            text = log.read(size - start)
    except OSError:
        return ""
    offsets[key] = size
    return text


class LostSlotHealer:
    """Rebuilds, one background thread per node, the replicas :func:`unrecoverable_replicas`
    finds."""

    def __init__(self, retry: RetryPolicy = REBUILD_RETRY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._retry = retry
        self._clock = clock
        self._running: dict[str, asyncio.Task[None]] = {}
        self._failures: dict[str, int] = {}
        self._not_before: dict[str, float] = {}
        self._log_offsets: dict[str, int] = {}

    @property
    def rebuilding(self) -> list[str]:
        return sorted(self._running)

    async def check(self, cluster: LocalCluster) -> None:
        """Start a rebuild of every replica that needs one and is not being rebuilt already."""
        try:
            found = await asyncio.to_thread(unrecoverable_replicas, cluster, self._log_offsets)
        except SagazError as exc:
            # The primary not answering is the read pool's news (and status's), not ours: no
            # replica can be rebuilt without it anyway.
            logger.debug("replication slots unreadable: %s", exc,
                         extra={"action": "slots_unreadable"})
            return
        for name, reason in found.items():
            if name in self._running or self._clock() < self._not_before.get(name, 0.0):
                continue
            self._running[name] = asyncio.create_task(self._rebuild(cluster.directory, name,
                                                                    reason))

    async def _rebuild(self, directory: Path, name: str, reason: str) -> None:
        attempt = self._failures.get(name, 0) + 1
        logger.warning("%s can no longer stream: %s; rebuilding it from a fresh base backup "
                       "with a new slot%s", name, reason,
                       f" (attempt {attempt})" if attempt > 1 else "",
                       extra={"action": "replica_rebuild_started", "node": name,
                              "reason": reason, "attempt": attempt})
        started = self._clock()
        try:
            await asyncio.to_thread(_rebuild_unless_busy, directory, name)
        except DirectoryBusy:
            # A `dev up|down|restart` or `ha promote|rejoin` is at work on the cluster (maybe on
            # this very node): not a failure; the next pass looks again.
            logger.info("%s: the cluster is busy with another command; rebuilding later", name,
                        extra={"action": "replica_rebuild_deferred", "node": name})
        except (SagazError, OSError) as exc:
            self._failures[name] = attempt
            delay = self._retry.delay(attempt)
            self._not_before[name] = self._clock() + delay
            logger.warning("rebuilding %s failed: %s; trying again in %.0f s", name,
                           str(exc).splitlines()[0], delay,
                           extra={"action": "replica_rebuild_failed", "node": name,
                                  "attempt": attempt})
        else:
            self._failures.pop(name, None)
            self._not_before.pop(name, None)
            logger.info("rebuilt %s in %.1f s: it streams from the primary again", name,
                        self._clock() - started,
                        extra={"action": "replica_rebuilt", "node": name})
        finally:
            # Its log now tells the new clone's story: start reading it afresh.
            self._log_offsets.pop(name, None)
            del self._running[name]

    async def close(self) -> None:
        """Wait for the rebuilds under way (a half-done pg_basebackup is worse than a late
        shutdown: the next pass would only start it again)."""
        if self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)


def _rebuild_unless_busy(directory: Path, name: str) -> None:
    """Rebuild under the cluster directory's lock, which every command that starts or stops
    nodes takes: never two base backups into one data directory, nor a purge of a node that is
    being restarted."""
    with directory_lock(directory, wait=False):
        rebuild(LocalCluster.load(directory), name)
