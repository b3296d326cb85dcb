"""The outbox and inbox tables of the PostgreSQL storage, as named operations for the relay
worker (:mod:`sagaz.outbox.worker`), the consumer inbox and ``sagaz outbox``.

Claims, marks and inserts go through the storage's pool (PgBouncer in transaction mode is fine:
SKIP LOCKED and NOTIFY need no session). Waking up on new events needs LISTEN, which only a
direct connection can hold: give ``listen_dsn`` (the primary, not PgBouncer); without it the
worker polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg.pq import TransactionStatus

from sagaz.errors import StorageError
from sagaz.outbox.event import OutboxEvent
from sagaz.outbox.store import ClaimedEvent, DeadLetter
from sagaz.storage.audit import clip_error
from sagaz.storage.postgresql.storage import PostgreSQLSagaStorage, _check_dsn, redact_dsn
from sagaz.storage.sql import queries

__all__ = ["ClaimedEvent", "DeadLetter", "PostgreSQLOutbox"]

logger = logging.getLogger(__name__)

Q = queries("postgresql")
T = TypeVar("T")
_Conn = psycopg.AsyncConnection[Any]
CHANNEL = "sagaz_outbox"


class PostgreSQLOutbox:
    """``saga_outbox`` and ``consumer_inbox`` of ``storage``'s database (an
    :class:`~sagaz.outbox.store.ManagedOutboxStore`)."""

    def __init__(self, storage: PostgreSQLSagaStorage, *, listen_dsn: str | None = None):
        if listen_dsn is not None:
            _check_dsn(listen_dsn)
        self.storage = storage
        self.listen_dsn = listen_dsn
        self._listener: _Conn | None = None

    def __repr__(self) -> str:
        return f"PostgreSQLOutbox({self.storage!r})"

    # -- relay -----------------------------------------------------------------------------------

    async def claim(self, worker: str, limit: int, claim_seconds: float) -> list[ClaimedEvent]:
        return await self._claim(Q["outbox_claim"], {
            "worker": worker, "limit": limit, "claim_seconds": claim_seconds})

    async def claim_ids(
        self, worker: str, event_ids: Sequence[str], claim_seconds: float
    ) -> list[ClaimedEvent]:
        """Claim exactly these events if they are still PENDING (the optimistic send)."""
        return await self._claim(Q["outbox_claim_ids"], {
            "worker": worker, "ids": list(event_ids), "claim_seconds": claim_seconds})

    async def _claim(self, query: str, params: dict[str, Any]) -> list[ClaimedEvent]:
        async def op(conn: _Conn) -> list[ClaimedEvent]:
            cur = await conn.execute(query, params)
            rows = sorted(await cur.fetchall(), key=lambda r: r[8])  # seq: publication order
            return [ClaimedEvent(OutboxEvent.restore(
                r[1], json.loads(r[4]), r[2], r[3], json.loads(r[5]), r[0], r[6]), r[7])
                for r in rows]

        return await self.storage._run(op)

    async def mark_sent(self, worker: str, event_ids: Sequence[str]) -> None:
        if event_ids:
            await self._execute(Q["outbox_mark_sent"], {"ids": list(event_ids), "worker": worker})

    async def mark_failed(
        self, worker: str, failures: Sequence[tuple[str, str]], *, max_attempts: int,
        base_backoff: float, max_backoff: float,
    ) -> list[str]:
        """Record failed publications; returns the ids that went to DEAD_LETTER."""
        if not failures:
            return []

        async def op(conn: _Conn) -> list[str]:
            cur = await conn.execute(Q["outbox_mark_failed"], {
                "ids": [i for i, _ in failures], "errors": [clip_error(e) for _, e in failures],
                "worker": worker, "max_attempts": max_attempts, "base_backoff": base_backoff,
                "max_backoff": max_backoff})
            return [row[0] for row in await cur.fetchall() if row[1] == "DEAD_LETTER"]

        return await self.storage._run(op)

    async def release(self, worker: str, event_ids: Sequence[str]) -> None:
        if event_ids:
            await self._execute(Q["outbox_release"], {"ids": list(event_ids), "worker": worker})

    async def wait(self, seconds: float) -> None:
        """Return when new events may be there: a NOTIFY (with ``listen_dsn``), or after
        ``seconds``."""
        if self.listen_dsn is None:
            await asyncio.sleep(seconds)
            return
        try:
            listener = await self._listen()
            async for _ in listener.notifies(timeout=seconds, stop_after=1):
                break
        except psycopg.OperationalError as exc:
            # The worker goes on polling; the next wait connects again.
            logger.warning("LISTEN connection to %s lost: %s", redact_dsn(self.listen_dsn), exc,
                           extra={"action": "outbox_listen_lost"})
            await self._close_listener()
            await asyncio.sleep(seconds)

    async def _listen(self) -> _Conn:
        if self._listener is None or self._listener.closed:
            assert self.listen_dsn is not None
            conn = await psycopg.AsyncConnection.connect(
                self.listen_dsn, autocommit=True, connect_timeout=5)
            await conn.execute(f"LISTEN {CHANNEL}")
            self._listener = conn
        return self._listener

    async def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(psycopg.Error):
                await listener.close()

    # -- producing outside sagas -----------------------------------------------------------------

    async def publish(
        self, events: OutboxEvent | Sequence[OutboxEvent], connection: _Conn | None = None
    ) -> None:
        """Write an event (or several) to the outbox: in the caller's transaction when
        ``connection`` is given (it commits or rolls back with the caller's own writes), else
        in one of ours."""
        if isinstance(events, OutboxEvent):
            events = [events]
        params = {"events": json.dumps([
            {"event_id": e.event_id, "saga_id": e.saga_id, "event_type": e.event_type,
             "key": e.key, "payload": e.payload, "headers": e.headers} for e in events])}

        async def op(conn: _Conn) -> None:
            await conn.execute(Q["outbox_insert"], params)
            await conn.execute(Q["notify_outbox"])

        if connection is not None:
            await op(connection)
        else:
            await self.storage._run(op)

    # -- dead letters and counts -----------------------------------------------------------------

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        async def op(conn: _Conn) -> list[DeadLetter]:
            cur = await conn.execute(Q["outbox_dead_letters"], {"limit": limit})
            return [DeadLetter(*row) for row in await cur.fetchall()]

        return await self.storage._run(op)

    async def retry_dead(self, event_ids: Sequence[str] | None = None) -> int:
        return await self._count(Q["outbox_retry_dead"], event_ids)

    async def purge_dead(self, event_ids: Sequence[str] | None = None) -> int:
        return await self._count(Q["outbox_purge_dead"], event_ids)

    async def counts(self) -> dict[str, int]:
        async def op(conn: _Conn) -> dict[str, int]:
            cur = await conn.execute(Q["outbox_counts"])
            return {str(s): int(n) for s, n in await cur.fetchall()}

        return await self.storage._run(op)

    async def backlog(self) -> tuple[int, int]:
        async def op(conn: _Conn) -> tuple[int, int]:
            cur = await conn.execute(Q["outbox_backlog"])
            row = await cur.fetchone()
            assert row is not None
            return int(row[0]), int(row[1])

        return await self.storage._run(op)

    # -- consumer inbox --------------------------------------------------------------------------

    async def process_many(
        self, consumer: str, items: Sequence[tuple[str, Callable[[_Conn], Awaitable[Any]]]],
    ) -> list[bool]:
        """Run each handler and record ``(consumer, event_id)`` in ONE transaction (the inbox's
        group commit): the handlers of events this consumer has not processed before run one
        after the other on its connection, the others are skipped. Returns, per item, whether
        its handler ran. If any handler raises, the whole transaction is rolled back (no inbox
        row: a redelivery runs it again) and the exception propagates."""
        params = {"consumer": consumer, "event_ids": [event_id for event_id, _ in items]}

        async def op(conn: _Conn, _: int) -> list[bool]:
            # BEGIN and the inbox rows leave in one message (client-side bound): one round trip
            # fewer than a transaction block, which matters at thousands of events/s.
            script = "BEGIN;\n" + psycopg.AsyncClientCursor(conn).mogrify(
                Q["inbox_record_many"], params)
            try:
                async with conn.cursor() as cur:
                    await cur.execute(script.encode())
                    cur.nextset()
                    fresh = {row[0] for row in await cur.fetchall()}
                ran = []
                for event_id, handler in items:
                    first = event_id in fresh
                    fresh.discard(event_id)  # a second delivery in the same batch is a duplicate
                    if first:
                        await handler(conn)
                    ran.append(first)
                _require_open_transaction(conn)
                await conn.execute("COMMIT")
            except BaseException:
                if not conn.closed:
                    with contextlib.suppress(psycopg.Error):
                        await conn.execute("ROLLBACK")
                raise
            return ran

        return await self.storage._retrying(op)

    async def close(self) -> None:
        await self._close_listener()

    async def _execute(self, query: str, params: dict[str, Any]) -> None:
        async def op(conn: _Conn) -> None:
            await conn.execute(query, params)

        await self.storage._run(op)

    async def _count(self, query: str, ids: Sequence[str] | None) -> int:
        async def op(conn: _Conn) -> int:
            cur = await conn.execute(query, {"ids": None if ids is None else list(ids)})
            return cur.rowcount

        return await self.storage._run(op)


def _require_open_transaction(conn: _Conn) -> None:
    """A handler that caught a database error leaves the transaction aborted, and COMMIT would
    then silently roll back its effects and the inbox row while the caller acks the message:
    fail instead, so the message is delivered again."""
    if conn.info.transaction_status == TransactionStatus.INERROR:
        raise InboxHandlerError(
            "the handler's transaction failed (a database error inside the handler was "
            "caught): its writes and the inbox row were rolled back; the event stays "
            "unprocessed")


class InboxHandlerError(StorageError):
    """A consumer handler left its transaction aborted."""
