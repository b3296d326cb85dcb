"""The jobs a :class:`sagaz.Worker` runs beside its recovery loop, each found through what the
storage declares (:mod:`sagaz.storage.capabilities`), never by probing its class:

- the **outbox relay** (:func:`relay_for`): a broker is configured and the storage keeps an
  outbox (:class:`~sagaz.outbox.store.StorageWithOutbox`);
- the **scheduled maintenance** (:class:`ScheduledMaintenance`): the storage has one
  (:class:`~sagaz.storage.capabilities.StorageWithMaintenance`: PostgreSQL partitions and the
  consumer-inbox cleanup). A run goes to a thread (it may wait seconds for table locks), so the
  recovery loop is never delayed; a failed run is logged and tried again at the next interval:
  partitions are premade days to months ahead, so one missed run costs nothing, while a worker
  that stopped recovering sagas over it would;
- the **retention of SENT events** (:class:`SentRetention`) of an outbox that keeps them in
  place (:class:`~sagaz.outbox.store.PrunesSentEvents`: SQLite; PostgreSQL drops partitions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from sagaz.config import SagaConfig
from sagaz.errors import SagazError, StorageError
from sagaz.outbox.brokers.base import Broker
from sagaz.outbox.store import PrunesSentEvents, StorageWithOutbox
from sagaz.storage.capabilities import StorageWithMaintenance

if TYPE_CHECKING:
    from sagaz.outbox.worker import OutboxWorker
    from sagaz.storage.base import SagaStorage
    from sagaz.storage.postgresql.maintenance import MaintenanceReport

__all__ = ["ScheduledMaintenance", "SentRetention", "relay_due_events", "relay_for",
           "run_every"]

logger = logging.getLogger(__name__)


def relay_for(config: SagaConfig, listen_dsn: str | None) -> OutboxWorker | None:
    """The relay for ``config``, or None without a broker or a writable storage with an outbox.

    ``listen_dsn`` (a direct connection, PgBouncer cannot LISTEN) lets a PostgreSQL relay wake
    up on NOTIFY; without it, it polls once a second when idle. A SQLite relay wakes up on the
    commits of its own process and polls for those of others."""
    broker = config.broker
    storage = config.write_storage
    if not isinstance(broker, Broker) or not isinstance(storage, StorageWithOutbox):
        return None
    if storage.readonly:
        return None
    from sagaz.outbox.worker import OutboxWorker

    return OutboxWorker(storage.outbox_store(listen_dsn=listen_dsn), broker)


async def relay_due_events(relay: OutboxWorker, deadline: float) -> str | None:
    """Relay until nothing is due, within ``deadline`` seconds (``sagaz worker --once``).
    Returns None when done, else the one-line reason it stopped (broker unreachable or too
    slow); the claims of an interrupted batch are given back, or expire after
    ``claim_seconds``."""
    from sagaz.outbox.brokers import BrokerConnectionError
    from sagaz.outbox.worker import BrokerUnavailable

    where = repr(relay.broker)
    try:
        async with asyncio.timeout(deadline):
            await relay.broker.connect()
            while await relay.relay_once():
                pass
    except TimeoutError:
        return (f"the outbox relay to {where} did not finish within {deadline:g}s "
                f"({relay.relayed} event(s) relayed); raise --relay-timeout or check the broker")
    except (BrokerUnavailable, SagazError, ConnectionError, OSError) as exc:
        # SagazError covers BrokerConnectionError (every driver's connection failure);
        # StorageError is a SagazError too but is the storage's: let it decide the outcome.
        if isinstance(exc, StorageError):
            raise
        # BrokerConnectionError and BrokerUnavailable name the broker and its (redacted) URL.
        named = isinstance(exc, BrokerUnavailable | BrokerConnectionError)
        return f"the outbox relay cannot reach the broker{'' if named else ' ' + where}: {exc}"
    return None


async def close_relay(relay: OutboxWorker) -> None:
    """Close the relay's broker connection and outbox store, best effort: a connection left
    open would only warn at exit."""
    for close in (relay.broker.close, relay.outbox.close):
        try:
            await close()
        except Exception:
            logger.debug("closing the relay's %s failed", close, exc_info=True,
                         extra={"action": "worker_relay_close_failed"})


async def run_every(
    interval: float, stop: asyncio.Event, job: Callable[[], Awaitable[object]], what: str,
    action: str,
) -> None:
    """``job()`` now, then every ``interval`` seconds until ``stop`` is set. A job reports its
    own failures; anything escaping it is a bug, logged with its traceback, and must not end the
    schedule silently (the next run would never come)."""
    while not stop.is_set():
        try:
            await job()
        except Exception:
            logger.exception("%s run failed; the next scheduled run tries again", what,
                             extra={"action": action})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


class SentRetention:
    """Deletes the SENT events of an outbox that keeps them in place on the maintenance
    schedule. ``on_done`` hears how many were deleted."""

    def __init__(self, store: PrunesSentEvents, days: int, interval: float,
                 on_done: Callable[[int], None] | None = None):
        self.store = store
        self.days = days
        self.interval = interval
        self.on_done = on_done

    async def run_once(self) -> None:
        try:
            deleted = await self.store.delete_sent(self.days * 86400.0)
        except StorageError as exc:
            logger.warning("outbox retention failed: %s; the next scheduled run tries again", exc,
                           extra={"action": "outbox_retention_failed"})
            return
        logger.info("outbox retention: %d SENT events deleted", deleted,
                    extra={"action": "outbox_retention", "deleted": deleted})
        if self.on_done is not None:
            self.on_done(deleted)

    async def run_forever(self, stop: asyncio.Event) -> None:
        await run_every(self.interval, stop, self.run_once, "outbox retention",
                        "outbox_retention_failed")


def retention_for(
    relay: OutboxWorker | None, days: int, interval: float,
    on_done: Callable[[int], None] | None = None,
) -> SentRetention | None:
    """The retention of SENT events for ``relay``'s outbox, or None: no relay (nothing is sent),
    scheduled maintenance off (``interval`` 0), or an outbox that needs none (PostgreSQL)."""
    if relay is None or interval <= 0 or not isinstance(relay.outbox, PrunesSentEvents):
        return None
    return SentRetention(relay.outbox, days, interval, on_done)


class ScheduledMaintenance:
    """The storage's maintenance every ``interval`` seconds. ``on_done`` hears each report."""

    def __init__(
        self, storage: StorageWithMaintenance, *, interval: float, inbox_retention_days: int,
        lock_timeout: float, dsn: str | None = None,
        on_done: Callable[[MaintenanceReport], None] | None = None,
    ):
        self.storage = storage
        self.interval = interval
        self.inbox_retention_days = inbox_retention_days
        self.lock_timeout = lock_timeout
        self.dsn = dsn
        self.on_done = on_done

    @classmethod
    def for_storage(
        cls, storage: SagaStorage, *, interval: float, inbox_retention_days: int,
        lock_timeout: float, dsn: str | None = None,
        on_done: Callable[[MaintenanceReport], None] | None = None,
    ) -> ScheduledMaintenance | None:
        """The maintenance of ``storage``, or None when there is none to run (disabled by
        ``interval`` 0, a storage without maintenance, or a read-only one)."""
        if interval <= 0 or not isinstance(storage, StorageWithMaintenance):
            return None
        if storage.maintenance_target(dsn) is None:
            return None
        return cls(storage, interval=interval, inbox_retention_days=inbox_retention_days,
                   lock_timeout=lock_timeout, dsn=dsn, on_done=on_done)

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Run now, then every ``interval`` seconds until ``stop`` is set."""
        await run_every(self.interval, stop, self.run_once, "database maintenance",
                        "worker_maintenance_failed")

    async def run_once(self) -> bool:
        """One run; False when it failed (logged, never raised) or skipped a table."""
        retry = "the next scheduled run tries again"
        try:
            report = await self.storage.run_maintenance(
                inbox_retention_days=self.inbox_retention_days, lock_timeout=self.lock_timeout,
                dsn=self.dsn)
        except Exception as exc:
            # StorageError (server down, schema missing...) is expected now and then; anything
            # else is a bug worth a traceback. Neither may end the worker.
            expected = isinstance(exc, SagazError)
            logger.warning("database maintenance failed: %s; %s", exc, retry,
                           exc_info=not expected, extra={"action": "worker_maintenance_failed"})
            return False
        for table, why in report.failures.items():
            logger.warning("database maintenance skipped %s: %s; %s", table, why, retry,
                           extra={"action": "worker_maintenance_failed", "table": table})
        # Keys prefixed: a key named like a LogRecord attribute ("created") makes logging raise.
        logger.info("database maintenance done", extra={
            "action": "worker_maintenance", "partitions_created": report.count("created"),
            "partitions_moved": report.count("moved"),
            "partitions_dropped": report.count("dropped"),
            "inbox_deleted": report.inbox_deleted})
        if self.on_done is not None:
            self.on_done(report)
        return not report.failures
