"""The group-commit write path: one transaction applies the creates and commits of many sagas.

A batch is ONE message: ``BEGIN; <locks>; <inserts>; <all units of work>; COMMIT`` sent with the
simple query protocol (parameters bound client-side), so it costs one network round trip and one
call into the driver, whatever its size. Measured against psycopg's pipeline mode, which also
needs one round trip, this halves the client CPU per batch: at moderate load, batches are small
and that per-batch cost is what a saga waits for. The rows travel as JSON row sets (one
parameter per statement, not one array per column). Each statement still gets its own snapshot
(READ COMMITTED), so the insert sees sagas committed while it waited for the advisory locks.

A second round trip is needed only in the rare cases that must look at what others wrote: a
create whose saga id exists already, or a commit that was fenced out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from sagaz.engine.types import SagaState
from sagaz.errors import LeaseLostError, SagaNotFoundError
from sagaz.storage.audit import entries_of
from sagaz.storage.base import UnitOfWork
from sagaz.storage.postgresql.rows import copy_state, load_sagas
from sagaz.storage.sql import queries

__all__ = ["Pending", "QueuedBatch", "build_batch"]

Q = queries("postgresql")
_Conn = psycopg.AsyncConnection[Any]


@dataclass(slots=True)
class Pending:
    """One write waiting for the next batch: a ``create`` (payload a SagaState) or a ``commit``
    (payload a UnitOfWork)."""

    kind: str
    payload: Any
    lease_seconds: float

    @property
    def saga_id(self) -> str:
        return str(self.payload.saga_id)

    @property
    def owner(self) -> str | None:
        """The lease holder making the write."""
        owner = self.payload.lease_owner if self.kind == "create" else self.payload.owner
        return None if owner is None else str(owner)


@dataclass
class QueuedBatch:
    """The script of one batch; :meth:`read` takes its results, :meth:`outcomes` turns them into
    one outcome per write."""

    batch: Sequence[Pending]
    retried: bool
    script: bytes = b""
    creates: list[tuple[int, SagaState]] = field(default_factory=list)
    commits: list[tuple[int, UnitOfWork]] = field(default_factory=list)
    first_create: dict[str, int] = field(default_factory=dict)
    insert_at: int | None = None
    """Index of the insert's result among the script's results (BEGIN is 0)."""
    update_at: int | None = None
    inserted: list[Any] = field(default_factory=list)
    updated: list[Any] = field(default_factory=list)

    async def read(self, cur: psycopg.AsyncCursor[Any]) -> None:
        """Collect the rows of the insert and the update from the script's results."""
        index = 0
        while True:
            if index == self.insert_at:
                self.inserted = await cur.fetchall()
            elif index == self.update_at:
                self.updated = await cur.fetchall()
            if not cur.nextset():
                return
            index += 1

    async def outcomes(self, conn: psycopg.AsyncConnection[Any]) -> list[Any]:
        """One outcome per item of the batch: a result, or an exception to raise to its caller."""
        results: list[Any] = [None] * len(self.batch)
        if self.creates:
            await self._create_outcomes(conn, results)
        if self.commits:
            await self._commit_outcomes(conn, results)
        return results

    async def _create_outcomes(self, conn: _Conn, results: list[Any]) -> None:
        inserted = {row[0]: (row[1], row[2]) for row in self.inserted}
        others = [sid for sid in self.first_create if sid not in inserted]
        existing: dict[str, SagaState] = {}
        if others:
            async with conn.transaction():
                existing = await load_sagas(conn, others)
        for index, state in self.creates:
            sid = state.saga_id
            if sid in inserted and self.first_create[sid] == index:
                state.created_at = state.updated_at = inserted[sid][0]
                state.lease_expires_at = inserted[sid][1]
                results[index] = (state, True)
            elif sid in inserted:  # a second create of the same id in this batch
                results[index] = (copy_state(self.batch[self.first_create[sid]].payload), False)
            elif sid in existing and self._is_our_lost_commit(state, existing[sid], index):
                results[index] = (existing[sid], True)
            else:
                results[index] = (existing[sid], False)

    def _is_our_lost_commit(self, state: SagaState, found: SagaState, index: int) -> bool:
        """After a connection failure the outcome of the previous COMMIT is unknown; if it did
        commit, the row we find is our own create (same lease owner, never updated since), and
        the caller must be told it created the saga, or nobody would run it."""
        return (self.retried and self.first_create[state.saga_id] == index
                and found.lease_owner == state.lease_owner and found.version == 0)

    async def _commit_outcomes(self, conn: _Conn, results: list[Any]) -> None:
        updated = {row[0] for row in self.updated}
        refused = sorted({w.saga_id for _, w in self.commits if w.saga_id not in updated})
        exists: set[str] = set()
        if refused:
            async with conn.transaction():
                cur = await conn.execute(Q["existing_saga_ids"], {"ids": refused})
                exists = {row[0] for row in await cur.fetchall()}
        for index, work in self.commits:
            sid = work.saga_id
            if sid in updated:
                results[index] = None
            elif sid in exists:
                results[index] = LeaseLostError(sid)
            else:
                results[index] = SagaNotFoundError(sid)


def build_batch(
    batch: Sequence[Pending], *, retried: bool, created: Mapping[str, float],
    mogrify: Callable[[str, dict[str, Any]], str],
) -> QueuedBatch:
    """The one-message transaction script applying ``batch``.

    ``created`` maps the ids of sagas this process created or loaded to their creation time,
    which prunes the update to the partitions holding them. ``mogrify`` binds parameters into a
    statement (a client-side-binding cursor's ``mogrify``)."""
    queued = QueuedBatch(batch, retried)
    leases: dict[str, float] = {}
    for index, item in enumerate(batch):
        if item.kind == "create":
            queued.creates.append((index, item.payload))
            queued.first_create.setdefault(item.payload.saga_id, index)
            leases.setdefault(item.payload.saga_id, item.lease_seconds)
        else:
            queued.commits.append((index, item.payload))
            leases[item.payload.saga_id] = item.lease_seconds
    # READ COMMITTED whatever the server's default: the insert must see the sagas committed
    # while it waited for the advisory locks, which a REPEATABLE READ snapshot would hide.
    statements = ["BEGIN ISOLATION LEVEL READ COMMITTED"]
    if queued.creates:
        ids = list(queued.first_create)
        rows = [_create_row(batch[queued.first_create[sid]].payload, leases[sid]) for sid in ids]
        statements.append(mogrify(Q["lock_saga_ids"], {"ids": ids}))
        queued.insert_at = len(statements)
        statements.append(mogrify(Q["insert_sagas"], {"ids": ids, "rows": json.dumps(rows)}))
    if queued.commits:
        units, steps = _commit_rows([w for _, w in queued.commits], leases)
        ids = [u["saga_id"] for u in units]
        times = [created.get(sid) for sid in ids]
        # A second of slack: the times went through float8 epochs, which may round.
        known = None if None in times else [t for t in times if t is not None]
        events = [{"event_id": e.event_id, "saga_id": w.saga_id, "event_type": e.event_type,
                   "key": e.key, "payload": e.payload, "headers": e.headers}
                  for _, w in queued.commits for e in w.events]
        # The audit rows travel in the same statement: no extra round trip, same fence.
        audit = [{"saga_id": w.saga_id, "event": a.event, "details": a.details, "at": a.at}
                 for _, w in queued.commits for a in entries_of(w)]
        consumed = [{"saga_id": w.saga_id, "signal_id": g}
                    for _, w in queued.commits for g in w.consumed_signals]
        forget = sorted({w.saga_id for _, w in queued.commits if w.forget_signals})
        queued.update_at = len(statements)
        statements.append(mogrify(Q["commit_units"], {
            "ids": ids, "units": json.dumps(units), "steps": json.dumps(steps),
            "events": json.dumps(events), "audit": json.dumps(audit),
            "consumed": json.dumps(consumed), "forget": forget,
            "dedupe_events": retried,
            "created_from": min(known) - 1 if known else None,
            "created_to": max(known) + 1 if known else None}))
        if events:
            statements.append(Q["notify_outbox"])
    statements.append("COMMIT")
    queued.script = ";\n".join(statements).encode("utf-8")
    return queued


def _create_row(state: SagaState, lease: float) -> dict[str, Any]:
    return {"saga_id": state.saga_id, "saga_name": state.saga_name,
            "status": state.status.value, "context": state.context,
            "idempotency_key": state.idempotency_key, "owner": state.lease_owner,
            "lease": lease, "fingerprint": state.definition_fingerprint,
            "definition_version": state.definition_version}


def _commit_rows(
    works: list[UnitOfWork], leases: dict[str, float]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The saga and step rows of a batch's units. Units of one saga in one batch (parallel steps
    completing together) merge in order into one saga row; the last write of a step wins."""
    units: dict[str, dict[str, Any]] = {}
    steps: dict[tuple[str, str], dict[str, Any]] = {}
    for work in works:
        unit = units.get(work.saga_id)
        if unit is None:
            unit = units[work.saga_id] = {
                "saga_id": work.saga_id, "owner": work.owner, "status": None, "context": None,
                "failed_step": None, "error": None, "release": False,
                "lease": leases[work.saga_id], "wake_at": None, "seen_seq": 0}
        if work.status is not None:
            unit["status"] = work.status.value
            unit["wake_at"], unit["seen_seq"] = work.wake_at, work.seen_signal_seq
        if work.context is not None:
            unit["context"] = work.context
        unit["failed_step"] = work.failed_step or unit["failed_step"]
        unit["error"] = work.error or unit["error"]
        unit["release"] = unit["release"] or work.release_lease
        for step in work.steps:
            steps[(work.saga_id, step.name)] = {
                "saga_id": work.saga_id, "step_name": step.name, "status": step.status.value,
                "result": step.result, "error": step.error, "attempts": step.attempts,
                "started_at": step.started_at, "finished_at": step.finished_at,
                "compensation_error": step.compensation_error}
    return list(units.values()), list(steps.values())
