"""The outbox of the SQLite storage, as named operations for the relay (:mod:`sagaz.outbox.worker`)
and ``sagaz outbox``: the counterpart of :mod:`sagaz.storage.postgresql.outbox`, with the same
states, claim rules and contract (tests/integration/outbox/test_store_contract.py).

Every write goes through the storage's group commit, in one ``BEGIN IMMEDIATE`` transaction:
SQLite lets one connection write at a time, across processes too, so a claim (one UPDATE ...
RETURNING) is exclusive without row locks, and several relay processes can share one file. A
claim is a lease (``claimed_until``): a relay that dies leaves its claims to expire and be taken
over.

SENT rows are not kept for good: :meth:`SQLiteOutbox.delete_sent` deletes those past their
retention (``sagaz worker`` calls it on its maintenance schedule); dead letters stay until
``sagaz outbox dlq purge``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sagaz.outbox.event import OutboxEvent
from sagaz.outbox.store import ClaimedEvent, DeadLetter
from sagaz.storage.audit import clip_error
from sagaz.storage.sql import queries

if TYPE_CHECKING:
    from sagaz.storage.sqlite import SQLiteSagaStorage

__all__ = ["SQLiteOutbox"]

Q = queries("sqlite", "outbox")
_DELETE_SLICE = 5000


class SQLiteOutbox:
    """``saga_outbox`` of ``storage``'s file (a :class:`~sagaz.outbox.store.ManagedOutboxStore`).

    ``wait`` returns as soon as this process commits events through ``storage``; events other
    processes commit are found by polling (the relay's ``poll_interval``). ``clock`` gives the
    times stored and compared (Unix seconds): tests inject one."""

    def __init__(self, storage: SQLiteSagaStorage, *, clock: Callable[[], float] = time.time):
        self.storage = storage
        self.clock = clock
        self._committed = asyncio.Event()
        storage.committed_event_hooks.append(self._on_commit)

    def __repr__(self) -> str:
        return f"SQLiteOutbox({self.storage!r})"

    def _on_commit(self, event_ids: list[str]) -> None:
        self._committed.set()

    # -- relay -----------------------------------------------------------------------------------

    async def claim(self, worker: str, limit: int, claim_seconds: float) -> list[ClaimedEvent]:
        return await self._claim(Q["claim"], {
            "worker": worker, "limit": limit, "claim_seconds": claim_seconds})

    async def claim_ids(
        self, worker: str, event_ids: Sequence[str], claim_seconds: float
    ) -> list[ClaimedEvent]:
        """Claim exactly these events if they are still PENDING (the optimistic send)."""
        return await self._claim(Q["claim_ids"], {
            "worker": worker, "ids": json.dumps(list(event_ids)),
            "claim_seconds": claim_seconds})

    async def _claim(self, query: str, params: dict[str, Any]) -> list[ClaimedEvent]:
        now = self.clock()

        def op(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(query, {**params, "now": now}).fetchall()

        rows: list[tuple[Any, ...]] = await self.storage._write(op)
        rows.sort(key=lambda r: r[8])  # rowid: publication order (RETURNING has no order)
        return [ClaimedEvent(OutboxEvent.restore(
            r[1], json.loads(r[4]), r[2], r[3], json.loads(r[5]), r[0], r[6]), r[7])
            for r in rows]

    async def mark_sent(self, worker: str, event_ids: Sequence[str]) -> None:
        if event_ids:
            await self._execute(Q["mark_sent"], {
                "ids": json.dumps(list(event_ids)), "worker": worker, "now": self.clock()})

    async def mark_failed(
        self, worker: str, failures: Sequence[tuple[str, str]], *, max_attempts: int,
        base_backoff: float, max_backoff: float,
    ) -> list[str]:
        """Record failed deliveries; returns the ids that went to DEAD_LETTER."""
        if not failures:
            return []
        common = {"worker": worker, "max_attempts": max_attempts, "base_backoff": base_backoff,
                  "max_backoff": max_backoff, "now": self.clock()}

        def op(conn: sqlite3.Connection) -> list[str]:
            dead = []
            for event_id, error in failures:
                row = conn.execute(Q["mark_failed"], {
                    **common, "event_id": event_id, "error": clip_error(error)}).fetchone()
                if row is not None and row[1] == "DEAD_LETTER":
                    dead.append(str(row[0]))
            return dead

        result: list[str] = await self.storage._write(op)
        return result

    async def release(self, worker: str, event_ids: Sequence[str]) -> None:
        if event_ids:
            await self._execute(Q["release"], {
                "ids": json.dumps(list(event_ids)), "worker": worker})

    async def wait(self, seconds: float) -> None:
        """Return when this process committed events, or after ``seconds``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._committed.wait(), seconds)
        # Cleared after the wake-up, not before the wait: a commit during the caller's claim
        # keeps the flag set, so the next wait returns at once instead of sleeping over it.
        self._committed.clear()

    async def close(self) -> None:
        with contextlib.suppress(ValueError):
            self.storage.committed_event_hooks.remove(self._on_commit)

    # -- producing outside sagas -----------------------------------------------------------------

    async def publish(self, events: OutboxEvent | Sequence[OutboxEvent]) -> None:
        """Write an event (or several) to the outbox, in a transaction of its own."""
        if isinstance(events, OutboxEvent):
            events = [events]
        now = self.clock()
        rows = [{"event_id": e.event_id, "saga_id": e.saga_id, "event_type": e.event_type,
                 "key": e.key, "payload": json.dumps(e.payload),
                 "headers": json.dumps(e.headers), "now": now} for e in events]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(Q["insert"], rows)

        await self.storage._write(op)
        self._committed.set()

    # -- dead letters, counts, retention ---------------------------------------------------------

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        rows = await self.storage._run(
            lambda conn: conn.execute(Q["dead_letters"], {"limit": limit}).fetchall())
        return [DeadLetter(*row) for row in rows]

    async def retry_dead(self, event_ids: Sequence[str] | None = None) -> int:
        return await self._count(Q["retry_dead"], event_ids, now=self.clock())

    async def purge_dead(self, event_ids: Sequence[str] | None = None) -> int:
        return await self._count(Q["purge_dead"], event_ids)

    async def counts(self) -> dict[str, int]:
        rows = await self.storage._run(lambda conn: conn.execute(Q["counts"]).fetchall())
        return {str(status): int(n) for status, n in rows}

    async def backlog(self) -> tuple[int, int]:
        pending, dead = await self.storage._run(lambda conn: conn.execute(Q["backlog"]).fetchone())
        return int(pending), int(dead)

    async def delete_sent(self, older_than_seconds: float) -> int:
        """Delete SENT events sent more than ``older_than_seconds`` ago, a slice per write
        transaction; returns how many."""
        before = self.clock() - older_than_seconds
        deleted = 0
        while True:
            count = await self._count(Q["delete_sent"], None, before=before,
                                      limit=_DELETE_SLICE, with_ids=False)
            deleted += count
            if count < _DELETE_SLICE:
                return deleted

    async def _execute(self, query: str, params: dict[str, Any]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(query, params)

        await self.storage._write(op)

    async def _count(
        self, query: str, ids: Sequence[str] | None, *, with_ids: bool = True, **params: Any
    ) -> int:
        if with_ids:
            params["ids"] = None if ids is None else json.dumps(list(ids))

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(query, params).rowcount

        result: int = await self.storage._write(op)
        return result
