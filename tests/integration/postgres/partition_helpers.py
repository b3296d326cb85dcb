"""Shared by the partition-maintenance tests: rows with chosen timestamps, where they landed, and
maintenance run as of a chosen "now" (``reference_time``), so that no test depends on the date."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

Conn = psycopg.Connection[TupleRow]
Summary = list[tuple[str, str, str | None, str | None]]

PARTITIONED = ("saga_audit_log", "saga_executions", "saga_outbox")

# "Today" for the date-driven tests: a leap day, a year's last second, a month's first instant and
# an ordinary mid-month morning. Each test runs for every one of them, whatever the real date is.
REFERENCE_TIMES = (
    datetime(2024, 2, 29, 12, 0, tzinfo=UTC),
    datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC),
    datetime(2026, 12, 1, 0, 0, tzinfo=UTC),
    datetime(2027, 3, 15, 8, 30, tzinfo=UTC),
)


def drop_dated_partitions(conn: Conn) -> None:
    """Leave every partitioned table with its DEFAULT partition only: the partitions the
    migration made for the real today would otherwise stand among those of the reference time."""
    conn.execute(
        """
        DO $$
        DECLARE p regclass;
        BEGIN
            FOR p IN SELECT c.oid::regclass FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                     WHERE i.inhparent::regclass::text IN
                           ('saga_executions', 'saga_outbox', 'saga_audit_log')
                       AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT' LOOP
                EXECUTE format('DROP TABLE %s', p);
            END LOOP;
        END $$
        """
    )


def maintain(conn: Conn, at: datetime, table: str | None = None) -> Summary:
    return conn.execute(
        "SELECT * FROM maintain_all_partitions(%s, %s)", (table, at)
    ).fetchall()


def changes(summary: Summary) -> list[tuple[Any, ...]]:
    """What a run changed: 'analyzed' is every run's, 'kept' every run's while rows live."""
    return [row[:3] for row in summary if row[1] not in ("analyzed", "kept")]


def months_ago(moment: datetime, months: int) -> datetime:
    """The same day of the month (at most the 28th), ``months`` months earlier (< 0: later)."""
    index = moment.year * 12 + moment.month - 1 - months
    return moment.replace(year=index // 12, month=index % 12 + 1, day=min(moment.day, 28))


def add_saga(
    conn: Conn, created_at: datetime, *, steps: int = 0, status: str = "COMPLETED"
) -> uuid.UUID:
    saga_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO saga_executions (saga_id, saga_name, status, created_at) "
        "VALUES (%s, 'order', %s, %s)",
        (saga_id, status, created_at),
    )
    for n in range(steps):
        conn.execute(
            "INSERT INTO saga_steps (saga_id, step_name, status) VALUES (%s, %s, 'COMPLETED')",
            (saga_id, f"step{n}"),
        )
    return saga_id


def add_event(conn: Conn, created_at: datetime, *, status: str = "PENDING") -> uuid.UUID:
    event_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO saga_outbox (event_id, event_type, payload, status, created_at) "
        "VALUES (%s, 'order.created', %s, %s, %s)",
        (event_id, json.dumps({"n": 1}), status, created_at),
    )
    return event_id


def add_audit(conn: Conn, created_at: datetime) -> int:
    row = conn.execute(
        "INSERT INTO saga_audit_log (event, created_at) VALUES ('started', %s) RETURNING id",
        (created_at,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def where_rows_are(conn: Conn, table: str, key: str) -> dict[Any, str]:
    """Primary key value (without created_at) -> partition holding the row."""
    query = sql.SQL("SELECT {}, tableoid::regclass::text FROM {}").format(
        sql.Identifier(key), sql.Identifier(table)
    )
    return dict(conn.execute(query).fetchall())


def partitions(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(
        """
        SELECT i.inhparent::regclass::text, c.relname, pg_get_expr(c.relpartbound, c.oid)
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE c.relkind = 'r' ORDER BY 1, 2
        """
    ).fetchall()


def ranges(conn: Conn, table: str) -> list[tuple[datetime, datetime]]:
    """The dated partitions of ``table`` as (start, end), in order."""
    rows = conn.execute(
        "SELECT range_start, range_end FROM get_partition_statistics() "
        "WHERE table_name = %s AND range_start IS NOT NULL ORDER BY range_start",
        (table,),
    ).fetchall()
    return [(start, end) for start, end in rows]


def count(conn: Conn, relation: str) -> int:
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(relation))
    (value,) = conn.execute(query).fetchone() or (0,)
    return int(value)


def exists(conn: Conn, relation: str) -> bool:
    (oid,) = conn.execute("SELECT to_regclass(%s)", (relation,)).fetchone() or (None,)
    return oid is not None


def month_name(table: str, moment: datetime) -> str:
    return f"{table}_p{moment.astimezone(UTC):%Y_%m}"


def day_name(table: str, moment: datetime) -> str:
    return f"{table}_p{moment.astimezone(UTC):%Y_%m_%d}"
