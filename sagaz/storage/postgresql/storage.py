"""PostgreSQL storage: production saga state on the partitioned schema.

Writes of concurrent sagas are coalesced: units of work queue up while the previous batch is
being committed, then one transaction applies the whole queue (group commit, see
:mod:`sagaz.storage.postgresql.batch`). ``commit`` still returns only after its own unit is
durable.

Works through PgBouncer in transaction mode (no prepared statements, no session state, advisory
locks only transaction-scoped) and with libpq multi-host DSNs (``host=a,b`` +
``target_session_attrs=read-write``): connection errors, as during a failover, are retried with
bounded backoff. Re-applying a batch whose COMMIT outcome was lost is harmless: every write is
an idempotent overwrite of state, guarded by the lease, and a create that did commit is
recognised as ours.

Read-your-writes on replicas: ``lsn = await write.write_lsn()`` after a write, then
``await read.get_saga(saga_id, min_lsn=lsn)`` waits (up to ``replica_wait`` seconds) until the
replica has replayed past ``lsn``, then falls back to ``primary`` (or fails): never an answer
older than the caller's own write. ``read_your_writes=True`` does this on every ``get_saga``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg_pool import PoolClosed, PoolTimeout

from sagaz.engine.fingerprint import DefinitionShape
from sagaz.engine.retry import RetryPolicy
from sagaz.engine.types import SagaState, SagaStatus
from sagaz.errors import ConfigurationError, StorageError
from sagaz.storage.audit import AuditEntry
from sagaz.storage.base import ClosesOnExit, UnitOfWork, report_batch, settle
from sagaz.storage.control import Seized, Seizure
from sagaz.storage.postgresql import control
from sagaz.storage.postgresql.batch import Pending, build_batch
from sagaz.storage.postgresql.errors import is_transient, reason, server_label, storage_error
from sagaz.storage.postgresql.pool import PROBE_AFTER, StoragePool
from sagaz.storage.postgresql.rows import load_sagas, saga_from_row
from sagaz.storage.postgresql.waits import PostgreSQLWaits
from sagaz.storage.sql import queries

if TYPE_CHECKING:
    from sagaz.storage.capabilities import BatchHook
    from sagaz.storage.postgresql.maintenance import MaintenanceReport
    from sagaz.storage.postgresql.outbox import PostgreSQLOutbox

__all__ = ["PostgreSQLSagaStorage", "redact_dsn"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Q = queries("postgresql")
_Conn = psycopg.AsyncConnection[Any]
_CREATED_CACHE_SIZE = 100_000
# Connection errors: 50 ms doubling to 0.5 s, jittered, until retry_timeout is spent. A higher
# cap made a client that retried through a 5 s restart wait up to 2 s more after the server was
# back; one attempt per 0.5 s per waiting writer costs the server nothing worth that.
_BACKOFF = RetryPolicy(base_delay=0.05, max_delay=0.5)
_MIN_POOL_WAIT = 0.5


class PostgreSQLSagaStorage(PostgreSQLWaits, ClosesOnExit):
    """Saga state in PostgreSQL. ``readonly=True`` (replicas, analytics) opens every transaction
    READ ONLY, so a write attempt fails instead of going to the wrong server.

    ``primary`` (a storage on the primary, for a read-only storage on replicas) is where
    :meth:`get_saga` falls back when the replica lags behind the LSN asked for.
    """

    def __init__(
        self,
        dsn: str,
        *,
        readonly: bool = False,
        min_size: int = 1,
        max_size: int = 8,
        max_batch: int = 512,
        max_inflight: int = 2,
        retry_timeout: float = 30.0,
        auto_migrate: bool = True,
        primary: PostgreSQLSagaStorage | None = None,
        read_your_writes: bool = False,
        replica_wait: float = 2.0,
    ):
        _check_dsn(dsn)
        if read_your_writes and primary is None:
            raise StorageError(
                "read_your_writes=True needs primary=<storage on the primary>: it asks the "
                "primary for its WAL position and falls back to it when the replica lags")
        self.dsn = dsn
        self.readonly = readonly
        self.min_size = min_size
        self.max_size = max_size
        self.max_batch = max_batch
        self.retry_timeout = retry_timeout
        self.auto_migrate = auto_migrate and not readonly
        self.primary = primary
        self.read_your_writes = read_your_writes
        self.replica_wait = replica_wait
        self._pool = StoragePool(dsn, min_size=min_size, max_size=max_size,
                                 name="sagaz-ro" if readonly else "sagaz-rw",
                                 configure=self._configure, first_use=self._first_use)
        self._migrated = False
        self.max_inflight = max_inflight
        self._pending: list[tuple[Pending, asyncio.Future[Any]]] = []
        self._inflight = 0
        self._inflight_ids: set[str] = set()
        self._flushes: set[asyncio.Task[None]] = set()
        # Creation times of the sagas this storage created or loaded, by id: they let a commit
        # touch only the partitions of its sagas. Bounded; a missing entry only costs pruning.
        self._created: dict[str, float] = {}
        self.committed_event_hooks: list[Callable[[list[str]], None]] = []
        """Called with the ids of outbox events right after the batch holding them committed
        (the optimistic send of :class:`~sagaz.outbox.worker.OutboxWorker`)."""
        self.batch_hooks: list[BatchHook] = []
        """Called after each batch committed, with its size and seconds (metrics)."""

    def __repr__(self) -> str:
        return f"PostgreSQLSagaStorage({redact_dsn(self.dsn)!r}, readonly={self.readonly})"

    # -- connections ---------------------------------------------------------------------------

    async def _configure(self, conn: _Conn) -> None:
        # Client-side settings only: psycopg puts READ ONLY into each BEGIN, so nothing leaks
        # into a PgBouncer server connection shared with other clients. Autocommit: every
        # operation opens its transaction explicitly (a transaction() block, or the BEGIN of a
        # write batch's script), so the driver never sends a BEGIN of its own first.
        await conn.set_read_only(self.readonly)
        await conn.set_autocommit(True)
        # Written into each BEGIN: the storage's reads rely on READ COMMITTED (a later statement
        # of a transaction sees what an earlier one waited for), whatever the server default.
        await conn.set_isolation_level(psycopg.IsolationLevel.READ_COMMITTED)

    async def _first_use(self, conn: _Conn) -> None:
        if self.auto_migrate and not self._migrated:
            await self._migrate_on(conn)

    async def migrate(self) -> list[int]:
        """Apply pending schema migrations (idempotent, safe to run concurrently); returns the
        versions applied now."""
        return await self._retrying(lambda conn, _: self._migrate_on(conn))

    async def _migrate_on(self, conn: _Conn) -> list[int]:
        from sagaz.storage.postgresql.migrate import migrate_async

        applied = await migrate_async(conn)
        self._migrated = True
        return applied

    async def _retrying(self, fn: Callable[[_Conn, int], Awaitable[T]]) -> T:
        """Call ``fn(connection, attempt)``, retrying what can heal (a restarted server, a
        failover, a killed backend) with bounded exponential backoff for ``retry_timeout``
        seconds; what cannot (a rejected login, a refused value) fails at once. Every driver
        error leaves as a :class:`StorageError`."""
        started = time.monotonic()
        deadline = started + self.retry_timeout
        attempt = 1
        while True:
            try:
                pool = await self._pool.get()
                # Not longer than the retries would go on; and a pool that cannot hand out a
                # connection soon is checked (see StoragePool.timed_out): it may be in backoff.
                wait = min(max(deadline - time.monotonic(), _MIN_POOL_WAIT), PROBE_AFTER)
                async with pool.connection(timeout=wait) as conn:
                    result = await fn(conn, attempt)
            except psycopg.Error as exc:
                if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction) and self.readonly:
                    raise StorageError(
                        f"{self!r} refused a write: it is read-only; write through the primary "
                        "storage") from exc
                cause: psycopg.Error = exc
                if isinstance(exc, PoolTimeout):
                    cause = await self._pool.timed_out(pool, exc)
                elif isinstance(exc, PoolClosed) and self._pool.replaced(pool):
                    continue  # waited on a pool renewed meanwhile: the new one serves
                # A read-write DSN that reaches a server in recovery (a demoted primary before
                # PgBouncer is re-pointed) is transient too: retried like a lost server.
                delay = _BACKOFF.delay(attempt)
                if not is_transient(cause) or time.monotonic() + delay > deadline:
                    raise storage_error(
                        cause, self.dsn, waited=time.monotonic() - started) from exc
                level = logging.INFO if attempt == 1 else logging.DEBUG
                logger.log(level, "PostgreSQL at %s: %s; retrying for up to %gs",
                           server_label(self.dsn), reason(cause, self.dsn), self.retry_timeout,
                           extra={"action": "pg_retry", "attempt": attempt})
                await asyncio.sleep(delay)
                attempt += 1
            else:
                if attempt > 1:
                    logger.info("PostgreSQL at %s answers again after %.1fs",
                                server_label(self.dsn), time.monotonic() - started,
                                extra={"action": "pg_reconnected", "attempt": attempt})
                return result

    async def _run(self, fn: Callable[[_Conn], Awaitable[T]]) -> T:
        """Run ``fn`` in one transaction, with retries."""

        async def attempt(conn: _Conn, _: int) -> T:
            async with conn.transaction():
                return await fn(conn)

        return await self._retrying(attempt)

    # -- group commit --------------------------------------------------------------------------

    async def _enqueue(self, item: Pending) -> Any:
        if self.readonly:
            raise StorageError(f"{self!r} is read-only; write through the primary storage")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._start_batches()
        return await future

    def _start_batches(self) -> None:
        """Start batches while fewer than ``max_inflight`` are being committed. Two in flight let
        one batch execute while the previous one waits for its commit to reach the disk."""
        while self._inflight < self.max_inflight and self._pending:
            entries = self._take_batch()
            if not entries:
                return
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._flush(entries))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    def _take_batch(self) -> list[tuple[Pending, asyncio.Future[Any]]]:
        """Up to ``max_batch`` pending writes, in order, skipping sagas that have a write in a
        batch still in flight: the writes of one saga must apply in the order they were made,
        and batches on two connections may reach the server in either order."""
        taken: list[tuple[Pending, asyncio.Future[Any]]] = []
        kept: list[tuple[Pending, asyncio.Future[Any]]] = []
        # One writer per saga per batch: the units of a saga merge into one fenced update, so
        # a unit of another owner (a recovery in this process taking over) waits for the next.
        owners: dict[str, str | None] = {}
        held = {item.saga_id for item, _ in kept}
        for entry in self._pending:
            item = entry[0]
            sid = item.saga_id
            if (len(taken) < self.max_batch and sid not in self._inflight_ids
                    and sid not in held and owners.setdefault(sid, item.owner) == item.owner):
                taken.append(entry)
            else:
                kept.append(entry)
                held.add(sid)  # later writes of this saga keep their order behind it
        self._pending = kept
        self._inflight_ids.update(item.saga_id for item, _ in taken)
        return taken

    async def _flush(self, entries: list[tuple[Pending, asyncio.Future[Any]]]) -> None:
        batch = [item for item, _ in entries]
        futures = [future for _, future in entries]
        started = time.perf_counter()
        try:
            try:
                outcomes = await self._write(batch)
            except StorageError as exc:
                if len(batch) == 1 or isinstance(exc.__cause__, psycopg.OperationalError):
                    raise
                # The database refused the batch (say, a value PostgreSQL cannot store): apply
                # its writes one by one, so that only the faulty one fails.
                outcomes = []
                for item in batch:
                    try:
                        outcomes += await self._write([item])
                    except StorageError as one:
                        outcomes.append(one)
        except BaseException as exc:
            settle(futures, [exc] * len(futures))
            if not isinstance(exc, Exception):
                raise
        else:
            if self.batch_hooks:
                report_batch(self.batch_hooks, len(batch), time.perf_counter() - started)
            self._remember_created(batch, outcomes)
            settle(futures, outcomes)
            if self.committed_event_hooks:
                self._announce_events(batch, outcomes)
        finally:
            self._inflight -= 1
            self._inflight_ids.difference_update(item.saga_id for item in batch)
            self._start_batches()

    async def _write(self, batch: list[Pending]) -> list[Any]:
        # `sent` survives the retries: only an attempt after one that reached the server may
        # find its own earlier COMMIT (see batch.QueuedBatch._is_our_lost_commit).
        return await self._retrying(functools.partial(
            _write_batch, batch=batch, created=self._created, sent=[False]))

    def _announce_events(self, batch: list[Pending], outcomes: list[Any]) -> None:
        ids = [e.event_id for item, outcome in zip(batch, outcomes, strict=True)
               if item.kind == "commit" and outcome is None for e in item.payload.events]
        if ids:
            for hook in self.committed_event_hooks:
                try:
                    hook(ids)
                except Exception:
                    logger.exception("committed-event hook %r failed", hook,
                                     extra={"action": "pg_event_hook_failed"})

    def _remember_created(self, batch: list[Pending], outcomes: list[Any]) -> None:
        for item, outcome in zip(batch, outcomes, strict=True):
            if item.kind == "create" and isinstance(outcome, tuple):
                self._remember(outcome[0])
            elif item.kind == "commit" and item.payload.release_lease:
                self._created.pop(item.payload.saga_id, None)

    def _remember(self, state: SagaState) -> None:
        if len(self._created) >= _CREATED_CACHE_SIZE:
            del self._created[next(iter(self._created))]  # the oldest entry
        self._created[state.saga_id] = state.created_at

    # -- SagaStorage ---------------------------------------------------------------------------

    async def create(self, state: SagaState, lease_seconds: float) -> tuple[SagaState, bool]:
        result: tuple[SagaState, bool] = await self._enqueue(
            Pending("create", state, lease_seconds))
        return result

    async def commit(self, work: UnitOfWork, lease_seconds: float) -> None:
        await self._enqueue(Pending("commit", work, lease_seconds))

    async def load(self, saga_id: str) -> SagaState | None:
        found = await self._run(lambda conn: load_sagas(conn, [saga_id]))
        state = found.get(saga_id)
        if state is not None and not self.readonly and not state.status.is_final:
            self._remember(state)  # recovery loads the sagas it claimed before committing
        return state

    async def renew_leases(
        self, owner: str, saga_ids: list[str], lease_seconds: float
    ) -> list[str]:
        if self.readonly:
            raise StorageError(f"{self!r} is read-only")

        async def op(conn: _Conn) -> list[str]:
            cur = await conn.execute(Q["renew_leases"],
                                     {"ids": saga_ids, "owner": owner, "lease": lease_seconds})
            kept = {row[0] for row in await cur.fetchall()}
            return [i for i in saga_ids if i not in kept]

        return await self._run(op)

    async def claim_expired(self, owner: str, lease_seconds: float, limit: int) -> list[str]:
        if self.readonly:
            raise StorageError(f"{self!r} is read-only")

        async def op(conn: _Conn) -> list[str]:
            cur = await conn.execute(Q["claim_expired"],
                                     {"owner": owner, "lease": lease_seconds, "limit": limit})
            return [row[0] for row in await cur.fetchall()]

        return await self._run(op)

    async def list_sagas(
        self, status: SagaStatus | None = None, limit: int = 50, offset: int = 0
    ) -> list[SagaState]:
        params = {"status": status.value if status else None, "limit": limit, "offset": offset}

        async def op(conn: _Conn) -> list[SagaState]:
            cur = await conn.execute(Q["list_sagas"], params)
            return [saga_from_row(row) for row in await cur.fetchall()]

        return await self._run(op)

    async def ping(self) -> None:
        """Raise StorageError unless the server answers a query (readiness probes; the
        caller bounds the wait, the storage retries connection errors meanwhile)."""
        async def op(conn: _Conn) -> None:
            await conn.execute(Q["ping"])

        await self._run(op)

    async def count_by_status(self) -> dict[SagaStatus, int]:
        async def op(conn: _Conn) -> dict[SagaStatus, int]:
            cur = await conn.execute(Q["count_by_status"])
            return {SagaStatus(s): n for s, n in await cur.fetchall()}

        return await self._run(op)

    async def get_history(self, saga_id: str) -> list[AuditEntry]:
        async def op(conn: _Conn) -> list[AuditEntry]:
            cur = await conn.execute(Q["saga_history"], {"saga_id": saga_id})
            return [AuditEntry(event, json.loads(details), at)
                    for event, details, at in await cur.fetchall()]

        return await self._run(op)

    # -- read-your-writes ----------------------------------------------------------------------

    async def write_lsn(self) -> str:
        """The server's WAL position now: on a primary, past every commit acknowledged so far
        (pass it as ``min_lsn`` to a replica); on a replica, how far it has replayed."""

        async def op(conn: _Conn) -> str:
            cur = await conn.execute(Q["current_lsn"])
            row = await cur.fetchone()
            assert row is not None
            return str(row[0])

        return await self._run(op)

    def maintenance_target(self, dsn: str | None = None) -> str | None:
        """Where maintenance runs: ``dsn`` (a direct connection) or this storage's DSN; None on a
        read-only storage (replicas are maintained through their primary)."""
        if self.readonly:
            return None
        return dsn.strip() if dsn and dsn.strip() else self.dsn

    async def run_maintenance(
        self, *, inbox_retention_days: int | None, lock_timeout: float, dsn: str | None = None,
    ) -> MaintenanceReport:
        """Partition maintenance, then the consumer-inbox cleanup, in a thread: it may wait
        seconds for table locks."""
        from sagaz.storage.postgresql.maintenance import run_maintenance

        target = self.maintenance_target(dsn)
        if target is None:
            raise StorageError(f"{self!r} is read-only; maintain the database through its primary")
        return await asyncio.to_thread(run_maintenance, target,
                                       retention_days=inbox_retention_days,
                                       lock_timeout=lock_timeout)

    def inbox_store(self) -> PostgreSQLOutbox:
        """The consumer inbox of this database (:class:`~sagaz.outbox.inbox.ConsumerInbox`)."""
        from sagaz.storage.postgresql.outbox import PostgreSQLOutbox

        return PostgreSQLOutbox(self)

    def outbox_store(self, *, listen_dsn: str | None = None) -> PostgreSQLOutbox:
        """The outbox of this database, for the relay and ``sagaz outbox``; ``listen_dsn`` (a
        direct connection) lets the relay wake up on NOTIFY."""
        from sagaz.storage.postgresql.outbox import PostgreSQLOutbox

        return PostgreSQLOutbox(self, listen_dsn=listen_dsn)

    async def get_saga(
        self, saga_id: str, *, min_lsn: str | None = None, wait: float | None = None
    ) -> SagaState | None:
        """The saga, as of at least ``min_lsn`` (a :meth:`write_lsn` of the primary).

        A replica that has not replayed that far within ``wait`` seconds (default
        ``replica_wait``) is bypassed: the read goes to ``primary``, or fails with
        :class:`StorageError` when there is none. It never returns an older state.
        """
        if min_lsn is None and self.read_your_writes:
            assert self.primary is not None
            min_lsn = await self.primary.write_lsn()
        if min_lsn is None:
            return await self.load(saga_id)
        deadline = time.monotonic() + (self.replica_wait if wait is None else wait)
        pause = 0.002
        while True:
            caught_up, found = await self._run(
                lambda conn: _load_if_replayed(conn, saga_id, min_lsn))
            if caught_up:
                return found
            if time.monotonic() + pause > deadline:
                break
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
        if self.primary is None:
            raise StorageError(
                f"{self!r} has not replayed WAL up to {min_lsn} within "
                f"{self.replica_wait if wait is None else wait:g}s and has no primary to fall "
                "back to; pass primary=<storage on the primary> or a longer wait")
        logger.info("replica behind %s, reading saga %s from the primary", min_lsn, saga_id,
                    extra={"action": "replica_fallback", "saga_id": saga_id})
        return await self.primary.load(saga_id)

    # -- ControlStorage (sagaz/storage/control.py) ---------------------------------------------

    async def record_definition(self, shape: DefinitionShape) -> None:
        self._check_writable()
        await self._run(lambda conn: control.record_definition(conn, shape))

    async def load_definition(self, fingerprint: str) -> DefinitionShape | None:
        return await self._run(lambda conn: control.load_definition(conn, fingerprint))

    async def seize(self, seizure: Seizure) -> Seized:
        self._check_writable()
        return await self._run(lambda conn: control.seize(conn, seizure))

    async def release_fenced(self, saga_id: str, owner: str) -> bool:
        self._check_writable()
        return await self._run(lambda conn: control.release_fenced(conn, saga_id, owner))

    async def release(self, saga_id: str, owner: str) -> bool:
        self._check_writable()
        return await self._run(lambda conn: control.release(conn, saga_id, owner))

    def _check_writable(self) -> None:
        if self.readonly:
            raise StorageError(f"{self!r} is read-only; write through the primary storage")

    async def close(self) -> None:
        """Let the writes in flight finish, then close the pool and wait for its tasks: nothing
        of this storage is left pending on the event loop."""
        loop = asyncio.get_running_loop()
        # A finishing batch may start the next one: wait until none is left.
        while flushes := [task for task in self._flushes if task.get_loop() is loop]:
            await asyncio.gather(*flushes, return_exceptions=True)
        await self._pool.close()


async def _write_batch(
    conn: _Conn, attempt: int, *, batch: list[Pending], created: dict[str, float],
    sent: list[bool],
) -> list[Any]:
    """The batch's transaction as one message (see :mod:`.batch`), then the outcomes."""
    queued = build_batch(batch, retried=sent[0], created=created,
                         mogrify=psycopg.AsyncClientCursor(conn).mogrify)
    async with conn.cursor() as cur:
        sent[0] = True
        await cur.execute(queued.script)
        await queued.read(cur)
    return await queued.outcomes(conn)


async def _load_if_replayed(
    conn: _Conn, saga_id: str, min_lsn: str
) -> tuple[bool, SagaState | None]:
    cur = await conn.execute(Q["replayed_past"], {"lsn": min_lsn})
    row = await cur.fetchone()
    if row is None or not row[0]:
        return False, None
    # Same transaction, later snapshot: replay only moves forward, so this sees the write.
    found = await load_sagas(conn, [saga_id])
    return True, found.get(saga_id)


def _check_dsn(dsn: str) -> None:
    """Refuse a malformed DSN at once, with a message that cannot contain its password: libpq
    quotes the offending part, which may be the password itself, and the pool would log that on
    every reconnection."""
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise ConfigurationError(
            f"the PostgreSQL DSN {redact_dsn(dsn)!r} is malformed; expected "
            "postgresql://user:password@host:5432/dbname (percent-encode special characters "
            "of the password, e.g. % as %25) or libpq key=value pairs") from None


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, fit for logs and messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable dsn>"
    if "password" in info:
        info["password"] = "***"
    return psycopg.conninfo.make_conninfo("", **info)
