"""PostgreSQL storage: production saga state on the partitioned schema.

Writes of concurrent sagas are coalesced: units of work queue up while the previous batch is
being committed, then one transaction applies the whole queue with one multi-row statement per
table (group commit). ``commit`` still returns only after its own unit is durable.

Works through PgBouncer in transaction mode (no prepared statements, no session state, advisory
locks only transaction-scoped) and with libpq multi-host DSNs (``host=a,b`` +
``target_session_attrs=read-write``): connection errors, as during a failover, are retried with
bounded backoff. Re-applying a batch whose COMMIT outcome was lost is harmless: every write is
an idempotent overwrite of state, guarded by the lease.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from sagaz.engine.types import SagaState, SagaStatus, StepState, StepStatus
from sagaz.errors import LeaseLostError, SagaNotFoundError, StorageError
from sagaz.storage.base import UnitOfWork
from sagaz.storage.sql import queries

__all__ = ["PostgreSQLSagaStorage"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Q = queries("postgresql")

# (kind, payload, lease seconds, future); kind is "create" or "commit".
_Pending = tuple[str, Any, float, asyncio.Future[Any]]


class PostgreSQLSagaStorage:
    """Saga state in PostgreSQL. ``readonly=True`` (replicas, analytics) opens every transaction
    READ ONLY, so a write attempt fails instead of going to the wrong server."""

    def __init__(
        self,
        dsn: str,
        *,
        readonly: bool = False,
        min_size: int = 1,
        max_size: int = 8,
        max_batch: int = 512,
        retry_timeout: float = 30.0,
        auto_migrate: bool = True,
    ):
        self.dsn = dsn
        self.readonly = readonly
        self.min_size = min_size
        self.max_size = max_size
        self.max_batch = max_batch
        self.retry_timeout = retry_timeout
        self.auto_migrate = auto_migrate and not readonly
        self._pool: AsyncConnectionPool | None = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None
        self._migrated = False
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"PostgreSQLSagaStorage({redact_dsn(self.dsn)!r}, readonly={self.readonly})"

    # -- connections ---------------------------------------------------------------------------

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # Client-side settings only: psycopg puts READ ONLY into each BEGIN, so nothing leaks
        # into a PgBouncer server connection shared with other clients.
        await conn.set_read_only(self.readonly)
        await conn.set_autocommit(False)

    async def _get_pool(self) -> AsyncConnectionPool:
        loop = asyncio.get_running_loop()
        if self._pool is None or self._pool_loop is not loop:
            # A pool belongs to the event loop that opened it (each asyncio.run gets a new one).
            pool = AsyncConnectionPool(
                self.dsn, min_size=self.min_size, max_size=self.max_size, open=False,
                kwargs={"prepare_threshold": None, "connect_timeout": 5},
                configure=self._configure, name="sagaz-ro" if self.readonly else "sagaz-rw",
            )
            await pool.open()
            self._pool, self._pool_loop = pool, loop
            if self.auto_migrate and not self._migrated:
                await self._migrate_with(pool)
        return self._pool

    async def migrate(self) -> list[int]:
        """Apply pending schema migrations (idempotent, safe to run concurrently); returns the
        versions applied now."""
        return await self._migrate_with(await self._get_pool())

    async def _migrate_with(self, pool: AsyncConnectionPool) -> list[int]:
        from sagaz.storage.postgresql.migrate import migrate_async

        async with pool.connection() as conn:
            applied = await migrate_async(conn)
        self._migrated = True
        return applied

    async def _run(self, fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        """Run ``fn`` in one transaction, retrying connection failures with bounded backoff."""
        deadline = time.monotonic() + self.retry_timeout
        delay = 0.05
        while True:
            pool = await self._get_pool()
            try:
                async with pool.connection() as conn, conn.transaction():
                    return await fn(conn)
            except (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction) as exc:
                if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction) and self.readonly:
                    raise StorageError(
                        f"{self!r} refused a write: it is read-only; write through the primary "
                        "storage") from exc
                if time.monotonic() + delay > deadline:
                    raise StorageError(
                        f"PostgreSQL unreachable for {self.retry_timeout:g}s: {exc}") from exc
                logger.warning("PostgreSQL connection error, retrying in %.2fs: %s", delay, exc,
                               extra={"action": "pg_retry"})
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, 2.0)
            except psycopg.Error as exc:
                raise StorageError(f"PostgreSQL error: {exc}") from exc

    # -- group commit --------------------------------------------------------------------------

    async def _enqueue(self, kind: str, payload: Any, lease_seconds: float) -> Any:
        if self.readonly:
            raise StorageError(f"{self!r} is read-only; write through the primary storage")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((kind, payload, lease_seconds, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            try:
                outcomes = await self._run(functools.partial(_apply_batch, batch=batch))
            except BaseException as exc:
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (*_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    # -- SagaStorage ---------------------------------------------------------------------------

    async def create(self, state: SagaState, lease_seconds: float) -> tuple[SagaState, bool]:
        result: tuple[SagaState, bool] = await self._enqueue("create", state, lease_seconds)
        return result

    async def commit(self, work: UnitOfWork, lease_seconds: float) -> None:
        await self._enqueue("commit", work, lease_seconds)

    async def load(self, saga_id: str) -> SagaState | None:
        found = await self._run(lambda conn: _load(conn, [saga_id]))
        return found.get(saga_id)

    async def renew_leases(
        self, owner: str, saga_ids: list[str], lease_seconds: float
    ) -> list[str]:
        if self.readonly:
            raise StorageError(f"{self!r} is read-only")

        async def op(conn: psycopg.AsyncConnection[Any]) -> list[str]:
            cur = await conn.execute(Q["renew_leases"],
                                     {"ids": saga_ids, "owner": owner, "lease": lease_seconds})
            kept = {row[0] for row in await cur.fetchall()}
            return [i for i in saga_ids if i not in kept]

        return await self._run(op)

    async def claim_expired(self, owner: str, lease_seconds: float, limit: int) -> list[str]:
        if self.readonly:
            raise StorageError(f"{self!r} is read-only")

        async def op(conn: psycopg.AsyncConnection[Any]) -> list[str]:
            cur = await conn.execute(Q["claim_expired"],
                                     {"owner": owner, "lease": lease_seconds, "limit": limit})
            return [row[0] for row in await cur.fetchall()]

        return await self._run(op)

    async def list_sagas(
        self, status: SagaStatus | None = None, limit: int = 50, offset: int = 0
    ) -> list[SagaState]:
        params = {"status": status.value if status else None, "limit": limit, "offset": offset}

        async def op(conn: psycopg.AsyncConnection[Any]) -> list[SagaState]:
            cur = await conn.execute(Q["list_sagas"], params)
            return [_saga_from_row(row) for row in await cur.fetchall()]

        return await self._run(op)

    async def count_by_status(self) -> dict[SagaStatus, int]:
        async def op(conn: psycopg.AsyncConnection[Any]) -> dict[SagaStatus, int]:
            cur = await conn.execute(Q["count_by_status"])
            return {SagaStatus(s): n for s, n in await cur.fetchall()}

        return await self._run(op)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None and self._pool_loop is asyncio.get_running_loop():
            await pool.close()


async def _apply_batch(
    conn: psycopg.AsyncConnection[Any], *, batch: Sequence[_Pending]
) -> list[Any]:
    """Apply a batch of creates and commits in the caller's transaction; one outcome per item."""
    outcomes: list[Any] = [None] * len(batch)
    creates = [(i, p, lease) for i, (kind, p, lease, _) in enumerate(batch) if kind == "create"]
    commits = [(i, p, lease) for i, (kind, p, lease, _) in enumerate(batch) if kind == "commit"]
    if creates:
        await _apply_creates(conn, creates, outcomes)
    if commits:
        await _apply_commits(conn, commits, outcomes)
    return outcomes


async def _apply_creates(
    conn: psycopg.AsyncConnection[Any], creates: list[tuple[int, SagaState, float]],
    outcomes: list[Any],
) -> None:
    first: dict[str, tuple[int, SagaState, float]] = {}
    for item in creates:
        first.setdefault(item[1].saga_id, item)
    ids = list(first)
    await conn.execute(Q["lock_saga_ids"], {"ids": ids})
    states = [first[i][1] for i in ids]
    cur = await conn.execute(Q["insert_sagas"], {
        "ids": ids, "names": [s.saga_name for s in states],
        "statuses": [s.status.value for s in states],
        "contexts": [json.dumps(s.context) for s in states],
        "keys": [s.idempotency_key for s in states],
        "owners": [s.lease_owner for s in states], "leases": [first[i][2] for i in ids],
    })
    inserted = {row[0]: (row[1], row[2]) for row in await cur.fetchall()}
    existing = await _load(conn, [i for i in ids if i not in inserted])
    for index, state, _ in creates:
        sid = state.saga_id
        if sid in inserted and first[sid][0] == index:
            state.created_at = state.updated_at = inserted[sid][0]
            state.lease_expires_at = inserted[sid][1]
            outcomes[index] = (state, True)
        elif sid in inserted:  # a second create of the same id in this batch
            outcomes[index] = (_copy(first[sid][1]), False)
        else:
            outcomes[index] = (existing[sid], False)


async def _apply_commits(
    conn: psycopg.AsyncConnection[Any], commits: list[tuple[int, UnitOfWork, float]],
    outcomes: list[Any],
) -> None:
    # Units of one saga in one batch (parallel steps) merge in order: one row, one update.
    merged: dict[str, UnitOfWork] = {}
    leases: dict[str, float] = {}
    for _, work, lease in commits:
        leases[work.saga_id] = lease
        into = merged.get(work.saga_id)
        if into is None:
            merged[work.saga_id] = UnitOfWork(
                work.saga_id, work.owner, work.status, work.context, list(work.steps),
                work.failed_step, work.error, work.release_lease, list(work.events))
            continue
        into.status = work.status or into.status
        into.context = work.context if work.context is not None else into.context
        into.steps.extend(work.steps)
        into.failed_step = work.failed_step or into.failed_step
        into.error = work.error or into.error
        into.release_lease = into.release_lease or work.release_lease
        into.events.extend(work.events)
    units = list(merged.values())
    cur = await conn.execute(Q["update_sagas"], {
        "ids": [u.saga_id for u in units], "owners": [u.owner for u in units],
        "statuses": [u.status.value if u.status else None for u in units],
        "contexts": [None if u.context is None else json.dumps(u.context) for u in units],
        "failed": [u.failed_step for u in units], "errors": [u.error for u in units],
        "releases": [u.release_lease for u in units],
        "leases": [leases[u.saga_id] for u in units],
    })
    updated = {row[0] for row in await cur.fetchall()}
    refused = [u.saga_id for u in units if u.saga_id not in updated]
    exists: set[str] = set()
    if refused:
        cur = await conn.execute(Q["existing_saga_ids"], {"ids": refused})
        exists = {row[0] for row in await cur.fetchall()}
    steps: dict[tuple[str, str], StepState] = {}
    for unit in units:
        if unit.saga_id in updated:
            for step in unit.steps:
                steps[(unit.saga_id, step.name)] = step  # last write of a step wins
    if steps:
        rows = list(steps.items())
        await conn.execute(Q["upsert_steps"], {
            "ids": [k[0] for k, _ in rows], "names": [s.name for _, s in rows],
            "statuses": [s.status.value for _, s in rows],
            "results": [None if s.result is None else json.dumps(s.result) for _, s in rows],
            "errors": [s.error for _, s in rows], "attempts": [s.attempts for _, s in rows],
            "started": [s.started_at for _, s in rows],
            "finished": [s.finished_at for _, s in rows],
            "comp_errors": [s.compensation_error for _, s in rows],
        })
    for index, work, _ in commits:
        sid = work.saga_id
        if sid in updated:
            outcomes[index] = None
        elif sid in exists:
            outcomes[index] = LeaseLostError(sid)
        else:
            outcomes[index] = SagaNotFoundError(sid)


def _copy(state: SagaState) -> SagaState:
    return SagaState(state.saga_id, state.saga_name, state.status, dict(state.context),
                     {k: v.copy() for k, v in state.steps.items()}, state.failed_step,
                     state.error, state.idempotency_key, state.created_at, state.updated_at,
                     state.lease_owner, state.lease_expires_at, state.version)


def _saga_from_row(row: Sequence[Any]) -> SagaState:
    return SagaState(
        saga_id=row[0], saga_name=row[1], status=SagaStatus(row[2]), context=json.loads(row[3]),
        failed_step=row[4], error=row[5], idempotency_key=row[6], created_at=row[7],
        updated_at=row[8], lease_owner=row[9], lease_expires_at=row[10], version=row[11],
    )


async def _load(conn: psycopg.AsyncConnection[Any], ids: list[str]) -> dict[str, SagaState]:
    if not ids:
        return {}
    cur = await conn.execute(Q["select_sagas"], {"ids": ids})
    found = {row[0]: _saga_from_row(row) for row in await cur.fetchall()}
    if found:
        cur = await conn.execute(Q["select_steps"], {"ids": list(found)})
        for s in await cur.fetchall():
            found[s[0]].steps[s[1]] = StepState(
                s[1], StepStatus(s[2]), None if s[3] is None else json.loads(s[3]), s[4], s[5],
                s[6], s[7], s[8])
    return found


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, fit for logs and messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable dsn>"
    if "password" in info:
        info["password"] = "***"
    return psycopg.conninfo.make_conninfo("", **info)
