"""The outbox stores the contract runs against, behind one small test-side interface: the real
SQLite file and the real PostgreSQL database, each with its storage, its store and raw reads of
``saga_outbox`` (the columns the contract looks at)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from sagaz.outbox.event import OutboxEvent
from sagaz.storage.postgresql import PostgreSQLSagaStorage
from sagaz.storage.postgresql.outbox import PostgreSQLOutbox
from sagaz.storage.sqlite import SQLiteSagaStorage
from sagaz.storage.sqlite_outbox import SQLiteOutbox

KINDS = ("sqlite", "postgresql")

# (event_type, aggregate_id, saga_id, status, attempts, last_error, next attempt in seconds from
# now, claimed_by), in publication order.
_COLUMNS = {
    "sqlite": "event_type, aggregate_id, saga_id, status, attempts, last_error, "
              "next_attempt_at - (julianday('now') - 2440587.5) * 86400.0, claimed_by "
              "FROM saga_outbox ORDER BY rowid",
    "postgresql": "event_type, aggregate_id, saga_id::text, status, attempts, last_error, "
                  "extract(epoch FROM next_attempt_at - now())::float8, claimed_by "
                  "FROM saga_outbox ORDER BY seq",
}


@dataclass
class Row:
    event_type: str
    key: str | None
    saga_id: str | None
    status: str
    attempts: int
    last_error: str | None
    next_in: float
    claimed_by: str | None


@dataclass
class Box:
    kind: str
    target: str
    """The SQLite file's path or the PostgreSQL DSN (what a child process opens)."""
    storage: SQLiteSagaStorage | PostgreSQLSagaStorage
    outbox: SQLiteOutbox | PostgreSQLOutbox

    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        await self.outbox.publish(list(events))

    def rows(self) -> list[Row]:
        query = "SELECT " + _COLUMNS[self.kind]
        if self.kind == "sqlite":
            with sqlite3.connect(self.target) as conn:
                raw: list[Any] = conn.execute(query).fetchall()
        else:
            with psycopg.connect(self.target) as pg:
                raw = pg.execute(query).fetchall()
        return [Row(*r) for r in raw]

    def held_by(self, fragment: str) -> int:
        """CLAIMED events whose claimed_by contains ``fragment``."""
        query = ("SELECT count(*) FROM saga_outbox WHERE status = 'CLAIMED' "
                 "AND claimed_by LIKE {0}")
        if self.kind == "sqlite":
            with sqlite3.connect(self.target) as conn:
                row = conn.execute(query.format("?"), (f"%{fragment}%",)).fetchone()
        else:
            with psycopg.connect(self.target) as pg:
                row = pg.execute(query.format("%s"), (f"%{fragment}%",)).fetchone()
        assert row is not None
        return int(row[0])

    def execute(self, sql: str) -> None:
        """A raw statement valid in both dialects (e.g. to age rows)."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.target) as conn:
                conn.execute(sql)
        else:
            with psycopg.connect(self.target, autocommit=True) as pg:
                pg.execute(sql)


def open_box(kind: str, target: str) -> Box:
    if kind == "sqlite":
        sqlite_storage = SQLiteSagaStorage(target)
        return Box(kind, target, sqlite_storage, SQLiteOutbox(sqlite_storage))
    pg_storage = PostgreSQLSagaStorage(target)
    return Box(kind, target, pg_storage, PostgreSQLOutbox(pg_storage, listen_dsn=target))


def sqlite_target(tmp_path: Path) -> str:
    return str(tmp_path / "sagaz.db")
