"""Saga rows <-> :class:`SagaState`: the reads shared by the storage and its write path."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import psycopg

from sagaz.engine.types import SagaState, SagaStatus, Signal, StepState, StepStatus
from sagaz.storage.sql import queries

__all__ = ["copy_state", "load_sagas", "saga_from_row"]

Q = queries("postgresql")


def saga_from_row(row: Sequence[Any]) -> SagaState:
    return SagaState(
        saga_id=row[0], saga_name=row[1], status=SagaStatus(row[2]), context=json.loads(row[3]),
        failed_step=row[4], error=row[5], idempotency_key=row[6], created_at=row[7],
        updated_at=row[8], lease_owner=row[9], lease_expires_at=row[10], version=row[11],
        definition_fingerprint=row[12], definition_version=row[13],
        cancel_requested=None if row[14] is None else json.loads(row[14]),
        wake_at=row[15], signal_seq=row[16],
    )


async def load_sagas(conn: psycopg.AsyncConnection[Any], ids: list[str]) -> dict[str, SagaState]:
    """The sagas with these ids, with their steps."""
    if not ids:
        return {}
    cur = await conn.execute(Q["select_sagas"], {"ids": ids})
    found = {row[0]: saga_from_row(row) for row in await cur.fetchall()}
    if found:
        cur = await conn.execute(Q["select_steps"], {"ids": list(found)})
        for s in await cur.fetchall():
            found[s[0]].steps[s[1]] = StepState(
                s[1], StepStatus(s[2]), None if s[3] is None else json.loads(s[3]), s[4], s[5],
                s[6], s[7], s[8])
        unfinished = [sid for sid, state in found.items() if not state.status.is_final]
        if unfinished:
            cur = await conn.execute(Q["select_signals"], {"ids": unfinished})
            for g in await cur.fetchall():
                found[g[0]].signals.append(Signal(g[1], g[2], json.loads(g[3]), g[4]))
    return found


def copy_state(state: SagaState) -> SagaState:
    return SagaState(state.saga_id, state.saga_name, state.status, dict(state.context),
                     {k: v.copy() for k, v in state.steps.items()}, state.failed_step,
                     state.error, state.idempotency_key, state.created_at, state.updated_at,
                     state.lease_owner, state.lease_expires_at, state.version,
                     state.definition_fingerprint, state.definition_version,
                     state.cancel_requested, state.wake_at, state.signal_seq)
