"""The outbox relay inside ``sagaz worker``: when a broker is configured (SAGAZ_BROKER_URL) and
the storage keeps an outbox (PostgreSQL or SQLite), the worker also publishes its events, and on
SQLite deletes the SENT ones past their retention."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from sagaz.config import SagaConfig
from sagaz.errors import SagazError, StorageError
from sagaz.outbox.brokers.base import Broker
from sagaz.outbox.store import PrunesSentEvents, StorageWithOutbox

from .output import out
from .scheduled import run_every

if TYPE_CHECKING:
    from sagaz.outbox.worker import OutboxWorker

__all__ = ["SentRetention", "relay_due_events", "relay_for", "retention_for"]

logger = logging.getLogger(__name__)


def relay_for(config: SagaConfig, listen_dsn: str | None) -> OutboxWorker | None:
    """The relay for ``config``, or None without a broker or a writable storage with an outbox.

    ``listen_dsn`` (SAGAZ_DATABASE_URL: a direct connection, PgBouncer cannot LISTEN) lets a
    PostgreSQL relay wake up on NOTIFY; without it, it polls once a second when idle. A SQLite
    relay wakes up on the commits of its own process and polls for those of others."""
    broker = config.broker
    storage = config.write_storage
    if not isinstance(broker, Broker) or not isinstance(storage, StorageWithOutbox):
        return None
    if storage.readonly:
        return None
    from sagaz.outbox.worker import OutboxWorker

    return OutboxWorker(storage.outbox_store(listen_dsn=listen_dsn), broker)


async def relay_due_events(relay: OutboxWorker, deadline: float) -> str | None:
    """``sagaz worker --once``: relay until nothing is due, within ``deadline`` seconds. Returns
    None when done, else the one-line reason it stopped (broker unreachable or too slow); the
    claims of an interrupted batch are given back, or expire after ``claim_seconds``."""
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
        # StorageError is a SagazError too but is the storage's: let it decide the exit code.
        if isinstance(exc, StorageError):
            raise
        # BrokerConnectionError and BrokerUnavailable name the broker and its (redacted) URL.
        named = isinstance(exc, BrokerUnavailable | BrokerConnectionError)
        return f"the outbox relay cannot reach the broker{'' if named else ' ' + where}: {exc}"
    return None


class SentRetention:
    """Deletes the SENT events of an outbox that keeps them in place (SQLite: PostgreSQL drops
    whole partitions in its maintenance instead) on the worker's maintenance schedule."""

    def __init__(self, store: PrunesSentEvents, days: int, interval: float):
        self.store = store
        self.days = days
        self.interval = interval

    async def run_once(self) -> None:
        try:
            deleted = await self.store.delete_sent(self.days * 86400.0)
        except StorageError as exc:
            logger.warning("outbox retention failed: %s; the next scheduled run tries again", exc,
                           extra={"action": "outbox_retention_failed"})
            return
        if deleted:
            out.print(f"outbox: {deleted} SENT event(s) older than {self.days} day(s) deleted")
        logger.info("outbox retention: %d SENT events deleted", deleted,
                    extra={"action": "outbox_retention", "deleted": deleted})

    async def run_forever(self, stop: asyncio.Event) -> None:
        await run_every(self.interval, stop, self.run_once, "outbox retention",
                        "outbox_retention_failed")


def retention_for(relay: OutboxWorker | None, days: int, interval: float) -> SentRetention | None:
    """The retention of SENT events for ``relay``'s outbox, or None: no relay (nothing is sent),
    scheduled maintenance off (``interval`` 0), or an outbox that needs none (PostgreSQL)."""
    if relay is None or interval <= 0 or not isinstance(relay.outbox, PrunesSentEvents):
        return None
    return SentRetention(relay.outbox, days, interval)
