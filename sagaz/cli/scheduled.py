"""The database maintenance ``sagaz worker`` runs on a schedule when its storage is PostgreSQL:
``maintain_all_partitions()`` table by table, then the consumer-inbox cleanup (what `sagaz db
maintain` and `sagaz db cleanup-inbox` do by hand).

A run goes to a thread (the operations are synchronous and may wait seconds for table locks) so
the recovery loop is never delayed. A failed run is logged as a warning and tried again at the
next interval: partitions are premade days to months ahead, so one missed run costs nothing, while
a worker that stopped recovering sagas over it would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sagaz.errors import SagazError

from .db import require_postgres
from .output import out

if TYPE_CHECKING:
    from sagaz.storage.base import SagaStorage
    from sagaz.storage.postgresql.maintenance import MaintenanceReport

__all__ = ["MaintenanceSchedule", "ScheduledMaintenance", "postgres_dsn", "run_every"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MaintenanceSchedule:
    """The worker's maintenance options."""

    interval: float
    """Seconds between runs; 0 disables scheduled maintenance."""
    inbox_retention_days: int
    lock_timeout: float
    dsn: str | None = None
    """Connection for maintenance (a direct one); None: the storage's own DSN."""

    def bind(self, storage: SagaStorage) -> ScheduledMaintenance | None:
        """The maintenance to run for ``storage``, or None when there is none to run (disabled,
        or not a writable PostgreSQL storage)."""
        if self.interval <= 0:
            return None
        dsn = postgres_dsn(storage)
        if dsn is None:
            return None
        if self.dsn and self.dsn.strip():
            require_postgres(self.dsn.strip(), "--maintenance-dsn (or SAGAZ_DATABASE_URL)")
            dsn = self.dsn.strip()
        return ScheduledMaintenance(dsn, self)


def postgres_dsn(storage: SagaStorage) -> str | None:
    """The DSN of a writable PostgreSQL storage, else None. The isinstance check needs psycopg,
    which a SQLite-only installation lacks: then no storage can be PostgreSQL anyway."""
    dsn = getattr(storage, "dsn", None)
    if not isinstance(dsn, str):
        return None
    try:
        from sagaz.storage.postgresql import PostgreSQLSagaStorage
    except ImportError:
        return None
    if isinstance(storage, PostgreSQLSagaStorage) and not storage.readonly:
        return dsn
    return None


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


class ScheduledMaintenance:
    def __init__(self, dsn: str, schedule: MaintenanceSchedule):
        self.dsn = dsn
        self.schedule = schedule

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Run now, then every ``schedule.interval`` seconds until ``stop`` is set."""
        await run_every(self.schedule.interval, stop, self.run_once, "database maintenance",
                        "worker_maintenance_failed")

    async def run_once(self) -> bool:
        """One run; False when it failed (logged, never raised) or skipped a table."""
        from sagaz.storage.postgresql import maintenance as pg

        retry = "the next scheduled run tries again"
        try:
            report = await asyncio.to_thread(
                pg.run_maintenance, self.dsn, retention_days=self.schedule.inbox_retention_days,
                lock_timeout=self.schedule.lock_timeout)
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
        out.print(_summary(report), soft_wrap=True)
        # Keys prefixed: a key named like a LogRecord attribute ("created") makes logging raise.
        logger.info("database maintenance done", extra={
            "action": "worker_maintenance", "partitions_created": report.count("created"),
            "partitions_moved": report.count("moved"),
            "partitions_dropped": report.count("dropped"),
            "inbox_deleted": report.inbox_deleted})
        return not report.failures


def _summary(report: MaintenanceReport) -> str:
    changes = [f"{a.action} {a.partition_name}" for a in report.actions
               if a.action != "analyzed" and a.partition_name]
    partitions = ", ".join(changes) if changes else "partitions up to date"
    inbox = ("" if report.inbox_deleted is None
             else f"; {report.inbox_deleted} old consumer_inbox row(s) deleted")
    return f"maintenance: {partitions}{inbox}"
