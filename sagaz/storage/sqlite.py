"""SQLite storage: the embedded default (``sqlite:///sagaz.db``).

One dedicated thread owns the connection. Writes from all coroutines queue up and are committed
together in one transaction per batch (group commit): while one batch is being fsynced, the next
one collects, so many concurrent sagas share each disk flush. Every ``commit`` still returns only
after its own batch is durable (WAL, ``synchronous=FULL``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sagaz.engine.fingerprint import DefinitionShape
from sagaz.engine.types import SagaState, SagaStatus, Signal, StepState, StepStatus
from sagaz.errors import LeaseLostError, SagaNotFoundError, SignalRefusedError, StorageError
from sagaz.private_files import PRIVATE_DIR_MODE, create_private_file
from sagaz.storage.audit import AuditEntry, entries_of
from sagaz.storage.base import ClosesOnExit, UnitOfWork, report_batch, settle
from sagaz.storage.control import Seized, Seizure
from sagaz.storage.sql import migrations, queries

if TYPE_CHECKING:
    from sagaz.storage.sqlite_outbox import SQLiteOutbox

__all__ = ["SQLiteSagaStorage"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_Op = Callable[[sqlite3.Connection], Any]
Q = queries("sqlite")


class SQLiteSagaStorage(ClosesOnExit):
    """Saga state in one SQLite file. Several processes may share the file (WAL mode)."""

    def __init__(self, path: str | Path, *, readonly: bool = False, busy_timeout: float = 10.0):
        self.path = Path(path).expanduser().absolute() if str(path) != ":memory:" else None
        self.readonly = readonly
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sagaz-sqlite")
        self._pending: list[tuple[_Op, asyncio.Future[Any]]] = []
        self._flushing = False
        self._flusher: asyncio.Task[None] | None = None
        self.committed_event_hooks: list[Callable[[list[str]], None]] = []
        """Called with the ids of outbox events right after the commit that wrote them (wakes
        the relay of this process, and its optimistic send)."""
        self.batch_hooks: list[Callable[[int, float], None]] = []
        """Called after each group-commit batch, with its size and seconds (metrics)."""

    def private_files(self) -> list[Path]:
        """The database file and its -wal and -shm files, those that exist."""
        if self.path is None:
            return []
        candidates = [self.path, *(self.path.with_name(self.path.name + suffix)
                                   for suffix in ("-wal", "-shm"))]
        return [p for p in candidates if p.exists()]

    def __repr__(self) -> str:
        return f"SQLiteSagaStorage({str(self.path or ':memory:')!r}, readonly={self.readonly})"

    # -- connection (runs in the storage thread) -----------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        if self.path is None:
            conn = sqlite3.connect(":memory:", isolation_level=None)
        elif self.readonly:
            if not self.path.exists():
                raise StorageError(f"SQLite database {self.path} does not exist (opened read-only)")
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
            # Created 0600 before SQLite opens it: sagas hold business data. SQLite gives the
            # -wal and -shm files it creates later the mode of the database file.
            create_private_file(self.path)
            conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        if not self.readonly:
            _switch_to_wal(conn, self.busy_timeout)
            # FULL: a commit survives power loss, not only a process crash.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            _migrate(conn)
        return conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, lambda: fn(self._connection()))
        except sqlite3.Error as exc:
            raise StorageError(f"SQLite error on {self.path}: {exc}") from exc

    # -- group commit --------------------------------------------------------------------------

    async def _write(self, op: _Op) -> Any:
        if self.readonly:
            raise StorageError(f"{self!r} is read-only; write through the primary storage")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((op, future))
        if not self._flushing:
            self._flushing = True
            self._flusher = loop.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                ops = [op for op, _ in batch]
                started = time.perf_counter()
                try:
                    outcomes = await self._run(functools.partial(_write_batch, ops=ops))
                except BaseException as exc:
                    settle([future for _, future in batch], [exc] * len(batch))
                    if not isinstance(exc, Exception):
                        raise
                    continue
                if self.batch_hooks:
                    report_batch(self.batch_hooks, len(batch), time.perf_counter() - started)
                settle([future for _, future in batch], outcomes)
        finally:
            self._flushing = False

    # -- SagaStorage ---------------------------------------------------------------------------

    async def create(self, state: SagaState, lease_seconds: float) -> tuple[SagaState, bool]:
        context = json.dumps(state.context)

        def op(conn: sqlite3.Connection) -> tuple[SagaState, bool]:
            now = time.time()
            cur = conn.execute(Q["insert_saga"], {
                "saga_id": state.saga_id, "saga_name": state.saga_name,
                "status": state.status.value, "context": context,
                "idempotency_key": state.idempotency_key, "now": now,
                "owner": state.lease_owner, "expires": now + lease_seconds,
                "fingerprint": state.definition_fingerprint,
                "definition_version": state.definition_version,
            })
            found = _load(conn, state.saga_id)
            assert found is not None
            return found, cur.rowcount == 1

        result: tuple[SagaState, bool] = await self._write(op)
        return result

    async def commit(self, work: UnitOfWork, lease_seconds: float) -> None:
        context = None if work.context is None else json.dumps(work.context)
        steps = [_step_params(work.saga_id, s) for s in work.steps]
        events = [_event_params(e) for e in work.events]
        audit = _audit_params(work.saga_id, entries_of(work))

        def op(conn: sqlite3.Connection) -> None:
            now = time.time()
            cur = conn.execute(Q["update_saga"], {
                "saga_id": work.saga_id, "owner": work.owner,
                "status": work.status.value if work.status else None, "context": context,
                "failed_step": work.failed_step, "error": work.error, "now": now,
                "release": work.release_lease, "expires": now + lease_seconds,
                "wake_at": work.wake_at, "seen_signal_seq": work.seen_signal_seq,
            })
            if cur.rowcount != 1:
                if conn.execute(Q["saga_exists"], {"saga_id": work.saga_id}).fetchone():
                    raise LeaseLostError(work.saga_id)
                raise SagaNotFoundError(work.saga_id)
            if steps:
                conn.executemany(Q["upsert_step"], steps)
            for signal_id in work.consumed_signals:
                conn.execute(Q["consume_signal"],
                             {"saga_id": work.saga_id, "signal_id": signal_id})
            if work.forget_signals:
                conn.execute(Q["forget_signals"], {"saga_id": work.saga_id})
            _insert_audit(conn, audit, now)
            if events:
                for params in events:
                    params["now"] = now
                conn.executemany(Q["insert_event"], events)

        await self._write(op)
        if events and self.committed_event_hooks:
            _announce(self.committed_event_hooks, [e["event_id"] for e in events])

    async def load(self, saga_id: str) -> SagaState | None:
        return await self._run(lambda conn: _load(conn, saga_id))

    async def renew_leases(
        self, owner: str, saga_ids: list[str], lease_seconds: float
    ) -> list[str]:
        def op(conn: sqlite3.Connection) -> list[str]:
            expires = time.time() + lease_seconds
            lost = []
            for saga_id in saga_ids:
                cur = conn.execute(Q["renew_lease"],
                                   {"saga_id": saga_id, "owner": owner, "expires": expires})
                if cur.rowcount != 1:
                    lost.append(saga_id)
            return lost

        result: list[str] = await self._write(op)
        return result

    async def claim_expired(self, owner: str, lease_seconds: float, limit: int) -> list[str]:
        def op(conn: sqlite3.Connection) -> list[str]:
            now = time.time()
            rows = conn.execute(Q["claim_expired"], {
                "owner": owner, "expires": now + lease_seconds, "now": now, "limit": limit,
            }).fetchall()
            return [r[0] for r in rows]

        result: list[str] = await self._write(op)
        return result

    async def load_many(self, saga_ids: list[str]) -> dict[str, SagaState]:
        def op(conn: sqlite3.Connection) -> dict[str, SagaState]:
            found = {}
            for saga_id in saga_ids:
                state = _load(conn, saga_id)
                if state is not None:
                    found[saga_id] = state
            return found

        return await self._run(op)

    async def signal(
        self, saga_id: str, name: str, payload: dict[str, Any], signal_id: str
    ) -> bool:
        text = json.dumps(payload)

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute(Q["saga_status"], {"saga_id": saga_id}).fetchone()
            if row is None:
                raise SagaNotFoundError(saga_id)
            status = SagaStatus(row[0])
            if status.is_final:
                raise SignalRefusedError(saga_id, status)
            cur = conn.execute(Q["insert_signal"], {
                "saga_id": saga_id, "signal_id": signal_id, "name": name, "payload": text,
                "now": time.time()})
            if cur.rowcount != 1:
                return False
            conn.execute(Q["count_signal"], {"saga_id": saga_id})
            return True

        result: bool = await self._write(op)
        return result

    async def claim_due(
        self, owner: str, lease_seconds: float, now: float, limit: int,
        saga_id: str | None = None,
    ) -> list[str]:
        def op(conn: sqlite3.Connection) -> list[str]:
            real_now = time.time()
            rows = conn.execute(Q["claim_due"], {
                "owner": owner, "expires": real_now + lease_seconds, "now": now,
                "real_now": real_now, "limit": limit, "saga_id": saga_id,
            }).fetchall()
            return [r[0] for r in rows]

        result: list[str] = await self._write(op)
        return result

    async def list_sagas(
        self, status: SagaStatus | None = None, limit: int = 50, offset: int = 0
    ) -> list[SagaState]:
        params = {"status": status.value if status else None, "limit": limit, "offset": offset}
        rows = await self._run(lambda conn: conn.execute(Q["list_sagas"], params).fetchall())
        return [_saga_from_row(row) for row in rows]

    async def ping(self) -> None:
        """Raise StorageError unless the database file answers a query (readiness probes)."""
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    async def count_by_status(self) -> dict[SagaStatus, int]:
        rows = await self._run(lambda conn: conn.execute(Q["count_by_status"]).fetchall())
        return {SagaStatus(status): count for status, count in rows}

    def outbox_store(self, *, listen_dsn: str | None = None) -> SQLiteOutbox:
        """The outbox of this file, for the relay and ``sagaz outbox`` (``listen_dsn`` is for
        PostgreSQL; this store wakes up on this process's commits and polls for the others)."""
        from sagaz.storage.sqlite_outbox import SQLiteOutbox

        return SQLiteOutbox(self)

    async def get_history(self, saga_id: str) -> list[AuditEntry]:
        rows = await self._run(
            lambda conn: conn.execute(Q["saga_history"], {"saga_id": saga_id}).fetchall())
        return [AuditEntry(event, json.loads(details), at) for event, details, at in rows]

    # -- ControlStorage --------------------------------------------------------------------------

    async def record_definition(self, shape: DefinitionShape) -> None:
        params = {"fingerprint": shape.fingerprint, "saga_name": shape.saga_name,
                  "version": shape.version, "shape": json.dumps(shape.to_json())}

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(Q["insert_definition"], {**params, "now": time.time()})

        await self._write(op)

    async def load_definition(self, fingerprint: str) -> DefinitionShape | None:
        row = await self._run(lambda conn: conn.execute(
            Q["select_definition"], {"fingerprint": fingerprint}).fetchone())
        return None if row is None else DefinitionShape.from_json(json.loads(row[0]))

    async def seize(self, seizure: Seizure) -> Seized:
        audit = _audit_params(seizure.saga_id, [seizure.entry] if seizure.entry else [])
        fingerprint, version = seizure.definition or (None, None)

        def op(conn: sqlite3.Connection) -> Seized:
            now = time.time()
            row = conn.execute(Q["lease_of"], {"saga_id": seizure.saga_id}).fetchone()
            if row is None:
                return Seized(None, False)
            status, owner, expires = SagaStatus(row[0]), row[1], row[2]
            live = owner is not None and expires is not None and expires >= now
            if status not in seizure.statuses or (live and not seizure.fence_live_holder):
                return Seized(_load(conn, seizure.saga_id), False, owner, expires)
            cancel = None if seizure.cancel is None else json.dumps(
                {**seizure.cancel, "fenced": owner if live else None})
            conn.execute(Q["seize_saga"], {
                "saga_id": seizure.saga_id, "owner": seizure.owner, "now": now,
                "expires": now + seizure.lease_seconds,
                "keep_live_expiry": seizure.keep_live_expiry, "hand_off": seizure.hand_off,
                "cancel": cancel, "fingerprint": fingerprint, "definition_version": version})
            _insert_audit(conn, audit, now)
            return Seized(_load(conn, seizure.saga_id), True, owner, expires,
                          fenced=live and owner != seizure.owner)

        result: Seized = await self._write(op)
        return result

    async def release_fenced(self, saga_id: str, owner: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(Q["release_fenced"],
                               {"saga_id": saga_id, "owner": owner, "now": time.time()})
            return cur.rowcount == 1

        result: bool = await self._write(op)
        return result

    async def release(self, saga_id: str, owner: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(Q["release_claim"], {"saga_id": saga_id, "owner": owner})
            return cur.rowcount == 1

        result: bool = await self._write(op)
        return result

    async def close(self) -> None:
        def shut(conn: sqlite3.Connection | None) -> None:
            if conn is not None:
                conn.close()

        conn, self._conn = self._conn, None
        await asyncio.get_running_loop().run_in_executor(self._thread, shut, conn)


def _announce(hooks: list[Callable[[list[str]], None]], event_ids: list[str]) -> None:
    for hook in hooks:
        try:
            hook(event_ids)
        except Exception:
            logger.exception("committed-event hook %r failed", hook,
                             extra={"action": "sqlite_event_hook_failed"})


def _event_params(event: Any) -> dict[str, Any]:
    return {"event_id": event.event_id, "saga_id": event.saga_id, "event_type": event.event_type,
            "key": event.key, "payload": json.dumps(event.payload),
            "headers": json.dumps(event.headers)}


def _audit_params(saga_id: str, entries: list[AuditEntry]) -> list[dict[str, Any]]:
    return [{"saga_id": saga_id, "event": e.event, "details": json.dumps(e.details), "at": e.at}
            for e in entries]


def _insert_audit(conn: sqlite3.Connection, rows: list[dict[str, Any]], now: float) -> None:
    for params in rows:
        params["now"] = now
    conn.executemany(Q["insert_audit"], rows)


def _write_batch(conn: sqlite3.Connection, ops: list[_Op]) -> list[Any]:
    """Run ``ops`` in one transaction; each under a savepoint so that one op's refusal (a lost
    lease) rolls back only that op."""
    outcomes: list[Any] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for op in ops:
            conn.execute("SAVEPOINT op")
            try:
                outcomes.append(op(conn))
            except (StorageError, SignalRefusedError, sqlite3.IntegrityError) as exc:
                conn.execute("ROLLBACK TO op")
                outcomes.append(exc if isinstance(exc, StorageError | SignalRefusedError)
                                else StorageError(f"constraint violated: {exc}"))
            conn.execute("RELEASE op")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes


def _switch_to_wal(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """Switch a file to WAL mode, waiting up to ``busy_timeout`` for other writers.

    Changing the journal mode of a fresh (rollback-journal) file needs an exclusive lock, and
    SQLite reports "database is locked" at once instead of calling the busy handler when another
    connection holds the write lock, so several processes opening one new file would fail. Retry
    with a short sleep until the deadline, like every other statement waits."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def _migrate(conn: sqlite3.Connection) -> None:
    """Apply pending migrations. BEGIN IMMEDIATE takes the database write lock, so concurrent
    processes migrate one after the other and each migration runs once."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(Q["create_migrations_table"])
        applied = {row[0] for row in conn.execute(Q["applied_migrations"])}
        for migration in migrations("sqlite"):
            if migration.version in applied:
                continue
            for statement in _statements(migration.sql):
                conn.execute(statement)
            conn.execute(Q["record_migration"], {
                "version": migration.version, "name": migration.name, "now": time.time()})
            logger.info("applied migration %04d_%s", migration.version, migration.name,
                        extra={"action": "migration_applied"})
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (executescript would commit implicitly)."""
    statements, current = [], []
    for line in script.splitlines():
        if line.strip().startswith("--"):
            continue
        current.append(line)
        candidate = "\n".join(current)
        if sqlite3.complete_statement(candidate):
            statements.append(candidate.strip())
            current = []
    if "\n".join(current).strip():
        raise StorageError("migration ends with an incomplete statement")
    return statements


def _step_params(saga_id: str, step: StepState) -> dict[str, Any]:
    return {
        "saga_id": saga_id, "step_name": step.name, "status": step.status.value,
        "result": None if step.result is None else json.dumps(step.result),
        "error": step.error, "attempts": step.attempts, "started_at": step.started_at,
        "finished_at": step.finished_at, "compensation_error": step.compensation_error,
    }


def _saga_from_row(row: tuple[Any, ...]) -> SagaState:
    return SagaState(
        saga_id=row[0], saga_name=row[1], status=SagaStatus(row[2]), context=json.loads(row[3]),
        failed_step=row[4], error=row[5], idempotency_key=row[6], created_at=row[7],
        updated_at=row[8], lease_owner=row[9], lease_expires_at=row[10], version=row[11],
        definition_fingerprint=row[12], definition_version=row[13],
        cancel_requested=None if row[14] is None else json.loads(row[14]),
        wake_at=row[15], signal_seq=row[16],
    )


def _load(conn: sqlite3.Connection, saga_id: str) -> SagaState | None:
    row = conn.execute(Q["select_saga"], {"saga_id": saga_id}).fetchone()
    if row is None:
        return None
    state = _saga_from_row(row)
    for s in conn.execute(Q["select_steps"], {"saga_id": saga_id}):
        state.steps[s[0]] = StepState(
            s[0], StepStatus(s[1]), None if s[2] is None else json.loads(s[2]), s[3], s[4], s[5],
            s[6], s[7])
    if not state.status.is_final:
        state.signals = [Signal(r[0], r[1], json.loads(r[2]), r[3])
                         for r in conn.execute(Q["select_signals"], {"saga_id": saga_id})]
    return state
