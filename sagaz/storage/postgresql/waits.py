"""Durable waits on PostgreSQL (:class:`~sagaz.storage.capabilities.StorageWithWaits`):
signals, the due-saga claim of every worker interval and the batch load of the claimed sagas.
Mixed into
:class:`~sagaz.storage.postgresql.storage.PostgreSQLSagaStorage`; the parking itself is part of
its group-commit write path (``commit_units``)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg

from sagaz.engine.types import SagaState, SagaStatus
from sagaz.errors import SagaNotFoundError, SignalRefusedError, StorageError
from sagaz.storage.postgresql.rows import load_sagas
from sagaz.storage.sql import queries

__all__ = ["PostgreSQLWaits"]

T = TypeVar("T")
Q = queries("postgresql")
_Conn = psycopg.AsyncConnection[Any]


class PostgreSQLWaits:
    """The wait operations; they use the storage's transactions (with its retries)."""

    readonly: bool

    async def _run(self, fn: Callable[[_Conn], Awaitable[T]]) -> T:
        raise NotImplementedError

    def _remember(self, state: SagaState) -> None:
        raise NotImplementedError

    async def load_many(self, saga_ids: list[str]) -> dict[str, SagaState]:
        """Many sagas in three queries (resuming a batch of due sagas)."""
        found = await self._run(lambda conn: load_sagas(conn, saga_ids))
        if not self.readonly:
            for state in found.values():
                if not state.status.is_final:
                    self._remember(state)
        return found

    async def signal(
        self, saga_id: str, name: str, payload: dict[str, Any], signal_id: str
    ) -> bool:
        if self.readonly:
            raise StorageError(f"{self!r} is read-only")
        params = {"saga_id": saga_id, "signal_id": signal_id, "name": name,
                  "payload": json.dumps(payload)}

        async def op(conn: _Conn) -> bool:
            cur = await conn.execute(Q["lock_saga_status"], params)
            row = await cur.fetchone()
            if row is None:
                raise SagaNotFoundError(saga_id)
            status = SagaStatus(row[0])
            if status.is_final:
                raise SignalRefusedError(saga_id, status)
            cur = await conn.execute(Q["insert_signal"], params)
            if await cur.fetchone() is None:
                return False
            await conn.execute(Q["count_signal"], params)
            return True

        return await self._run(op)

    async def claim_due(
        self, owner: str, lease_seconds: float, now: float, limit: int,
        saga_id: str | None = None,
    ) -> list[str]:
        if self.readonly:
            raise StorageError(f"{self!r} is read-only")

        async def op(conn: _Conn) -> list[str]:
            cur = await conn.execute(Q["claim_due"], {
                "owner": owner, "lease": lease_seconds, "now": now, "limit": limit,
                "saga_id": saga_id})
            return [row[0] for row in await cur.fetchall()]

        return await self._run(op)
