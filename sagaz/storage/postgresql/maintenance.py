"""Named maintenance operations on a sagaz PostgreSQL database, for ``sagaz db`` and the scheduled
maintenance of ``sagaz worker``: apply migrations, maintain partitions, read partition statistics,
delete old consumer-inbox rows.

Each operation opens its own short-lived connection (maintenance runs rarely; a pool would only
hold server connections idle) and is synchronous: the worker runs it in a thread. Their SQL is in
``sagaz/storage/sql/postgresql/queries.sql`` under "Maintenance"; the work itself is done by the
SQL functions of migration 0002.

Migrations need a DIRECT connection (not PgBouncer in transaction mode). The other operations
use only transaction-scoped settings and locks, so they also work through PgBouncer.

No message or log line of this module contains a password: the server is named by
:func:`server_label`, and libpq's messages are scrubbed of the DSN's password.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import IsolationLevel
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from sagaz.errors import ConfigurationError, StorageError
from sagaz.storage.postgresql.errors import server_label
from sagaz.storage.postgresql.migrate import migrate
from sagaz.storage.postgresql.storage import redact_dsn
from sagaz.storage.sql import queries

__all__ = [
    "DEFAULT_INBOX_RETENTION_DAYS", "DEFAULT_LOCK_TIMEOUT", "MaintenanceReport",
    "PartitionAction", "PartitionStatistics", "cleanup_inbox", "maintain_partitions",
    "migrate_database", "partition_statistics", "run_maintenance", "server_label",
]

logger = logging.getLogger(__name__)

Q = queries("postgresql")

DEFAULT_LOCK_TIMEOUT = 5.0
"""Seconds maintenance waits for a table lock before giving up on that table until next time."""
DEFAULT_INBOX_RETENTION_DAYS = 90
MAX_INBOX_RETENTION_DAYS = 36500  # 100 years: beyond that, simply never run the cleanup
CONNECT_TIMEOUT = 5  # seconds; an unreachable server must fail fast, not hang a CLI or worker

# Errors after which a table is skipped and the others still maintained: the table was busy, and
# the next run (worker interval, cron) simply tries again.
_TRANSIENT = (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected)
# What a database without (or with an older) sagaz schema answers.
_NO_SCHEMA = (psycopg.errors.UndefinedFunction, psycopg.errors.UndefinedTable)


@dataclass(frozen=True, slots=True)
class PartitionAction:
    """One row of ``maintain_all_partitions()``: what maintenance did to one table."""

    table_name: str
    action: str
    """created, moved (rows out of DEFAULT), analyzed, dropped (past retention), or kept (past
    retention, but holding sagas still running or events not yet delivered; ``detail`` counts
    them by status)."""
    partition_name: str | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class PartitionStatistics:
    """One partition of a managed table (``get_partition_statistics()``)."""

    table_name: str
    partition_name: str
    range_start: datetime | None
    """Inclusive lower bound; None for the DEFAULT partition or an unbounded (MINVALUE) one."""
    range_end: datetime | None
    is_default: bool
    row_count: int
    """Exact for DEFAULT partitions (and with ``exact=True``); the planner's estimate otherwise."""
    total_bytes: int


@dataclass(slots=True)
class MaintenanceReport:
    """What one maintenance run did; ``failures`` names the tables it could not maintain."""

    actions: list[PartitionAction] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    inbox_deleted: int | None = None
    """consumer_inbox rows deleted, or None when the cleanup was not part of the run."""

    def count(self, action: str) -> int:
        return sum(1 for a in self.actions if a.action == action)


def migrate_database(dsn: str) -> list[int]:
    """Apply the pending migrations; return the versions applied now (empty: already current).
    Needs a direct connection, not PgBouncer (multi-statement DDL scripts)."""
    with _connect(dsn) as conn:
        try:
            return migrate(conn)
        except psycopg.Error as exc:
            raise _failed("migrating", dsn, exc) from exc


def maintain_partitions(
    dsn: str, table: str | None = None, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT
) -> MaintenanceReport:
    """Run ``maintain_all_partitions()`` for ``table``, or for every managed table, one table per
    transaction. Tables that stay locked longer than ``lock_timeout`` seconds are skipped and
    reported in ``failures``; the others are maintained all the same."""
    timeout = _lock_timeout_setting(lock_timeout)
    with _connect(dsn) as conn:
        report = MaintenanceReport()
        _maintain(conn, dsn, table, timeout, report)
        return report


def partition_statistics(dsn: str, *, exact: bool = False) -> list[PartitionStatistics]:
    """Every partition of every managed table, DEFAULT partitions last within their table."""
    with _connect(dsn) as conn:
        try:
            rows = conn.execute(Q["partition_statistics"], {"exact": exact}).fetchall()
        except psycopg.Error as exc:
            raise _failed("reading partition statistics", dsn, exc) from exc
    return [PartitionStatistics(*row) for row in rows]


def cleanup_inbox(dsn: str, retention_days: int = DEFAULT_INBOX_RETENTION_DAYS) -> int:
    """Delete consumer_inbox rows processed more than ``retention_days`` ago; return how many.
    Keep the retention longer than any broker redelivery window, or duplicates get through."""
    days = _retention_days(retention_days)
    with _connect(dsn) as conn:
        return _cleanup(conn, dsn, days)


def run_maintenance(
    dsn: str, *, retention_days: int | None = DEFAULT_INBOX_RETENTION_DAYS,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> MaintenanceReport:
    """Everything a scheduler runs: partition maintenance of every table, then the inbox cleanup
    (skipped when ``retention_days`` is None), on one connection."""
    timeout = _lock_timeout_setting(lock_timeout)
    days = None if retention_days is None else _retention_days(retention_days)
    with _connect(dsn) as conn:
        report = MaintenanceReport()
        _maintain(conn, dsn, None, timeout, report)
        if days is not None:
            report.inbox_deleted = _cleanup(conn, dsn, days)
        return report


# -- internals ------------------------------------------------------------------------------------


@contextmanager
def _connect(dsn: str) -> Iterator[psycopg.Connection[TupleRow]]:
    logger.debug("connecting to %s", redact_dsn(dsn), extra={"action": "maintenance_connect"})
    try:
        conn = psycopg.connect(
            dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
            # No server-side prepared statements: the DSN may be a PgBouncer in transaction mode.
            prepare_threshold=None, fallback_application_name="sagaz-maintenance",
        )
    except psycopg.ProgrammingError as exc:
        # libpq would quote the malformed part, which may be the password: say only what to fix.
        raise ConfigurationError(
            "the PostgreSQL DSN is malformed; expected postgresql://user@host:5432/dbname "
            "or key=value pairs such as 'host=127.0.0.1 dbname=app'") from exc
    except psycopg.OperationalError as exc:
        raise StorageError(
            f"cannot connect to PostgreSQL at {server_label(dsn)}: {_reason(dsn, exc)}"
        ) from exc
    # maintain_all_partitions() refuses anything but READ COMMITTED, whatever the server default.
    conn.isolation_level = IsolationLevel.READ_COMMITTED
    with conn:
        yield conn


def _maintain(
    conn: psycopg.Connection[TupleRow], dsn: str, table: str | None, timeout: str,
    report: MaintenanceReport,
) -> None:
    try:
        managed = [row[0] for row in conn.execute(Q["maintenance_tables"]).fetchall()]
    except psycopg.Error as exc:
        raise _failed("listing the partitioned tables", dsn, exc) from exc
    if table is not None and table not in managed:
        raise ConfigurationError(
            f"{table!r} is not a table sagaz maintains; choose one of: {', '.join(managed)}")
    # One transaction per table: its locks are released at once, and a busy table (lock timeout)
    # does not cost the others their new partitions.
    for name in [table] if table is not None else managed:
        try:
            with conn.transaction():
                conn.execute(Q["maintenance_lock_timeout"], {"timeout": timeout})
                rows = conn.execute(Q["maintain_partitions"], {"table": name}).fetchall()
        except _TRANSIENT as exc:
            why = _reason(dsn, exc)
            report.failures[name] = why
            # Info, not warning: the caller reports it (the CLI as an error, the worker as a
            # warning with its retry time).
            logger.info("maintenance of %s skipped: %s", name, why,
                           extra={"action": "partition_maintenance_skipped", "table": name})
            continue
        except psycopg.Error as exc:
            raise _failed(f"maintaining {name}", dsn, exc) from exc
        for row in rows:
            action = PartitionAction(*row)
            report.actions.append(action)
            if action.action == "kept":
                # Not an error, but worth an operator's look: a saga running (or an event
                # undelivered) for longer than the table's retention is usually stuck.
                logger.warning(
                    "partition %s of %s is past retention but was not dropped: %s",
                    action.partition_name, name, action.detail,
                    extra={"action": "partition_kept", "table": name,
                           "partition": action.partition_name})
            elif action.action != "analyzed":
                logger.info("partition %s of %s: %s %s", action.partition_name, name,
                            action.action, action.detail or "",
                            extra={"action": "partition_maintenance", "table": name,
                                   "partition": action.partition_name, "done": action.action})


def _cleanup(conn: psycopg.Connection[TupleRow], dsn: str, days: int) -> int:
    try:
        row = conn.execute(Q["cleanup_consumer_inbox"], {"days": days}).fetchone()
    except psycopg.Error as exc:
        raise _failed("cleaning up consumer_inbox", dsn, exc) from exc
    deleted = int(row[0]) if row is not None and row[0] is not None else 0
    logger.info("deleted %d consumer_inbox rows older than %d days", deleted, days,
                extra={"action": "inbox_cleanup", "deleted": deleted, "days": days})
    return deleted


def _retention_days(days: Any) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or days < 0:
        raise ConfigurationError(
            f"inbox retention must be a whole number of days >= 0, got {days!r}")
    if days > MAX_INBOX_RETENTION_DAYS:
        raise ConfigurationError(
            f"inbox retention of {days} days is more than {MAX_INBOX_RETENTION_DAYS} (100 years); "
            "to keep every row, do not run the cleanup")
    return days


def _lock_timeout_setting(seconds: Any) -> str:
    # 0 would mean "wait forever" to PostgreSQL: exactly what a maintenance run must not do while
    # the application writes.
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise ConfigurationError(
            f"the maintenance lock timeout must be a number of seconds > 0, got {seconds!r}")
    return f"{max(1, round(seconds * 1000))}ms"


def _reason(dsn: str, exc: psycopg.Error) -> str:
    """libpq's message on one line, without the DSN's password should it ever contain it."""
    # A server error's primary message: str(exc) adds the query excerpt with a caret ("LINE 1:").
    text = " ".join((exc.diag.message_primary or str(exc)).split()) or type(exc).__name__
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        password = None
    if password:
        text = text.replace(str(password), "***")
    return text


def _failed(doing: str, dsn: str, exc: psycopg.Error) -> StorageError:
    where = server_label(dsn)
    if isinstance(exc, _NO_SCHEMA):
        return StorageError(
            f"{doing} failed on {where}: the sagaz schema is missing or outdated there "
            f"({_reason(dsn, exc)}); apply it first with `sagaz db migrate` on a direct "
            "connection")
    if isinstance(exc, _TRANSIENT):
        return StorageError(f"{doing} on {where} gave up waiting for a lock ({_reason(dsn, exc)});"
                            " nothing was changed; try again later")
    return StorageError(f"{doing} failed on {where}: {_reason(dsn, exc)}")
