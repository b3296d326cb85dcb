"""The PostgreSQL side of :class:`~sagaz.storage.control.ControlStorage`: definition shapes and
operator seizures, each one short transaction on the storage's pool."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from sagaz.engine.fingerprint import DefinitionShape
from sagaz.engine.types import SagaStatus
from sagaz.storage.control import Seized, Seizure
from sagaz.storage.postgresql.rows import load_sagas
from sagaz.storage.sql import queries

__all__ = ["load_definition", "record_definition", "release", "release_fenced", "seize"]

Q = queries("postgresql")
_Conn = psycopg.AsyncConnection[Any]


async def record_definition(conn: _Conn, shape: DefinitionShape) -> None:
    await conn.execute(Q["insert_definition"], {
        "fingerprint": shape.fingerprint, "saga_name": shape.saga_name, "version": shape.version,
        "shape": json.dumps(shape.to_json())})


async def load_definition(conn: _Conn, fingerprint: str) -> DefinitionShape | None:
    cur = await conn.execute(Q["select_definition"], {"fingerprint": fingerprint})
    row = await cur.fetchone()
    return None if row is None else DefinitionShape.from_json(json.loads(row[0]))


async def seize(conn: _Conn, seizure: Seizure) -> Seized:
    """Run inside the caller's transaction."""
    cur = await conn.execute(Q["lock_saga_lease"], {"saga_id": seizure.saga_id})
    row = await cur.fetchone()
    if row is None:
        return Seized(None, False)
    status, owner, expires, now, created_at = SagaStatus(row[0]), row[1], row[2], row[3], row[4]
    live = owner is not None and expires is not None and expires >= now
    if status not in seizure.statuses or (live and not seizure.fence_live_holder):
        found = await load_sagas(conn, [seizure.saga_id])
        return Seized(found.get(seizure.saga_id), False, owner, expires)
    fingerprint, version = seizure.definition or (None, None)
    await conn.execute(Q["seize_saga"], {
        "saga_id": seizure.saga_id, "created_at": created_at, "owner": seizure.owner,
        "lease": seizure.lease_seconds, "keep_live_expiry": seizure.keep_live_expiry,
        "hand_off": seizure.hand_off,
        "cancel": None if seizure.cancel is None else json.dumps(
            {**seizure.cancel, "fenced": owner if live else None}),
        "fingerprint": fingerprint, "definition_version": version})
    if seizure.entry is not None:
        await conn.execute(Q["insert_audit_row"], {
            "saga_id": seizure.saga_id, "event": seizure.entry.event,
            "details": json.dumps(seizure.entry.details)})
    found = await load_sagas(conn, [seizure.saga_id])
    return Seized(found.get(seizure.saga_id), True, owner, expires,
                  fenced=live and owner != seizure.owner)


async def release_fenced(conn: _Conn, saga_id: str, owner: str) -> bool:
    cur = await conn.execute(Q["release_fenced"], {"saga_id": saga_id, "owner": owner})
    return cur.rowcount == 1


async def release(conn: _Conn, saga_id: str, owner: str) -> bool:
    cur = await conn.execute(Q["release_claim"], {"saga_id": saga_id, "owner": owner})
    return cur.rowcount == 1
