"""In-memory storage: process-local, for tests and benchmarks. Same semantics as the others
(fencing, idempotent create), no durability."""

from __future__ import annotations

import time
from typing import Any

from sagaz.engine.fingerprint import DefinitionShape
from sagaz.engine.types import SagaState, SagaStatus, Signal
from sagaz.errors import LeaseLostError, SagaNotFoundError, SignalRefusedError, StorageError
from sagaz.storage.audit import AuditEntry, entries_of
from sagaz.storage.base import ClosesOnExit, UnitOfWork
from sagaz.storage.control import Seized, Seizure

__all__ = ["InMemorySagaStorage"]


def _copy_state(state: SagaState, with_steps: bool = True) -> SagaState:
    return SagaState(
        state.saga_id, state.saga_name, state.status, dict(state.context),
        {k: v.copy() for k, v in state.steps.items()} if with_steps else {},
        state.failed_step, state.error, state.idempotency_key, state.created_at,
        state.updated_at, state.lease_owner, state.lease_expires_at, state.version,
        state.definition_fingerprint, state.definition_version,
        None if state.cancel_requested is None else dict(state.cancel_requested),
        state.wake_at, state.signal_seq,
    )


class InMemorySagaStorage(ClosesOnExit):
    """Keeps sagas in a dict. Every method completes without suspending, which also makes each
    one atomic with respect to other coroutines."""

    def __init__(
        self, *, readonly: bool = False,
        _shared: tuple[dict[str, SagaState], dict[str, list[AuditEntry]],
                       dict[str, DefinitionShape]] | None = None,
    ):
        self.readonly = readonly
        self._sagas: dict[str, SagaState] = {} if _shared is None else _shared[0]
        self._history: dict[str, list[AuditEntry]] = {} if _shared is None else _shared[1]
        self._definitions: dict[str, DefinitionShape] = {} if _shared is None else _shared[2]
        self.events: list[Any] = []
        # saga id -> signal id -> (signal, consumed); dicts keep the order they were sent in.
        self._signals: dict[str, dict[str, tuple[Signal, bool]]] = {}

    def reader(self) -> InMemorySagaStorage:
        """A read-only view of the same data (stands in for a replica in tests)."""
        return InMemorySagaStorage(readonly=True,
                                   _shared=(self._sagas, self._history, self._definitions))

    def _record(self, saga_id: str, entries: list[AuditEntry], now: float) -> None:
        if entries:
            self._history.setdefault(saga_id, []).extend(
                e if e.at is not None else AuditEntry(e.event, e.details, now) for e in entries)

    def _check_writable(self) -> None:
        if self.readonly:
            raise StorageError("this storage is read-only (readonly=True); write through the "
                               "primary storage instead")

    async def create(self, state: SagaState, lease_seconds: float) -> tuple[SagaState, bool]:
        self._check_writable()
        existing = self._sagas.get(state.saga_id)
        if existing is not None:
            return _copy_state(existing), False
        now = time.time()
        stored = _copy_state(state)
        stored.created_at = stored.updated_at = now
        stored.lease_expires_at = now + lease_seconds
        self._sagas[state.saga_id] = stored
        state.created_at = state.updated_at = now
        state.lease_expires_at = stored.lease_expires_at
        return state, True

    async def commit(self, work: UnitOfWork, lease_seconds: float) -> None:
        self._check_writable()
        saga = self._sagas.get(work.saga_id)
        if saga is None:
            raise SagaNotFoundError(work.saga_id)
        if saga.lease_owner != work.owner:
            raise LeaseLostError(work.saga_id)
        now = time.time()
        if work.status is not None:
            saga.status = work.status
        if work.context is not None:
            saga.context = dict(work.context)
        for step in work.steps:
            saga.steps[step.name] = step  # committed steps are never mutated by the engine
        if work.failed_step is not None:
            saga.failed_step = work.failed_step
        if work.error is not None:
            saga.error = work.error
        saga.updated_at = now
        saga.version += 1
        if work.release_lease:
            saga.lease_owner = None
            saga.lease_expires_at = None
        else:
            saga.lease_expires_at = now + lease_seconds
        if work.status is SagaStatus.WAITING:
            # A signal that arrived since the executor looked wakes the saga at once.
            saga.wake_at = 0.0 if saga.signal_seq != work.seen_signal_seq else work.wake_at
        elif work.status is not None:
            saga.wake_at = None
        kept = self._signals.get(work.saga_id)
        if kept is not None:
            for signal_id in work.consumed_signals:
                if signal_id in kept:
                    kept[signal_id] = (kept[signal_id][0], True)
            if work.forget_signals:
                del self._signals[work.saga_id]
        self.events.extend(work.events)
        self._record(work.saga_id, entries_of(work), now)

    async def load(self, saga_id: str) -> SagaState | None:
        saga = self._sagas.get(saga_id)
        if saga is None:
            return None
        state = _copy_state(saga)
        state.signals = [s for s, consumed in self._signals.get(saga_id, {}).values()
                         if not consumed]
        return state

    async def load_many(self, saga_ids: list[str]) -> dict[str, SagaState]:
        found = {}
        for saga_id in saga_ids:
            state = await self.load(saga_id)
            if state is not None:
                found[saga_id] = state
        return found

    async def signal(
        self, saga_id: str, name: str, payload: dict[str, Any], signal_id: str
    ) -> bool:
        self._check_writable()
        saga = self._sagas.get(saga_id)
        if saga is None:
            raise SagaNotFoundError(saga_id)
        if saga.status.is_final:
            raise SignalRefusedError(saga_id, saga.status)
        kept = self._signals.setdefault(saga_id, {})
        if signal_id in kept:
            return False
        kept[signal_id] = (Signal(signal_id, name, dict(payload), time.time()), False)
        saga.signal_seq += 1
        if saga.status is SagaStatus.WAITING:
            saga.wake_at = 0.0
        return True

    async def claim_due(
        self, owner: str, lease_seconds: float, now: float, limit: int,
        saga_id: str | None = None,
    ) -> list[str]:
        self._check_writable()
        real_now = time.time()
        candidates = ([self._sagas[saga_id]] if saga_id in self._sagas else []) if saga_id \
            else self._sagas.values()
        due = sorted((s for s in candidates if s.status is SagaStatus.WAITING
                      and s.wake_at is not None and s.wake_at <= now
                      and (s.lease_owner is None or (s.lease_expires_at or 0) < real_now)),
                     key=lambda s: s.wake_at or 0.0)[:limit]
        for saga in due:
            saga.lease_owner = owner
            saga.lease_expires_at = real_now + lease_seconds
        return [s.saga_id for s in due]

    async def renew_leases(
        self, owner: str, saga_ids: list[str], lease_seconds: float
    ) -> list[str]:
        self._check_writable()
        lost = []
        expires = time.time() + lease_seconds
        for saga_id in saga_ids:
            saga = self._sagas.get(saga_id)
            if saga is None or saga.lease_owner != owner:
                lost.append(saga_id)
            else:
                saga.lease_expires_at = expires
        return lost

    async def claim_expired(self, owner: str, lease_seconds: float, limit: int) -> list[str]:
        self._check_writable()
        now = time.time()
        claimed: list[str] = []
        for saga in self._sagas.values():
            if len(claimed) >= limit:
                break
            if saga.status.is_final or saga.status is SagaStatus.WAITING:
                continue  # a parked saga is taken by claim_due when it is due
            if saga.lease_expires_at is not None and saga.lease_expires_at < now:
                saga.lease_owner = owner
                saga.lease_expires_at = now + lease_seconds
                claimed.append(saga.saga_id)
        return claimed

    async def list_sagas(
        self, status: SagaStatus | None = None, limit: int = 50, offset: int = 0
    ) -> list[SagaState]:
        found = [s for s in self._sagas.values() if status is None or s.status is status]
        found.sort(key=lambda s: s.created_at, reverse=True)
        return [_copy_state(s, with_steps=False) for s in found[offset:offset + limit]]

    async def count_by_status(self) -> dict[SagaStatus, int]:
        counts: dict[SagaStatus, int] = {}
        for saga in self._sagas.values():
            counts[saga.status] = counts.get(saga.status, 0) + 1
        return counts

    async def get_history(self, saga_id: str) -> list[AuditEntry]:
        return list(self._history.get(saga_id, ()))

    async def close(self) -> None:
        return None

    # -- ControlStorage --------------------------------------------------------------------------

    async def record_definition(self, shape: DefinitionShape) -> None:
        self._check_writable()
        self._definitions.setdefault(shape.fingerprint, shape)

    async def load_definition(self, fingerprint: str) -> DefinitionShape | None:
        return self._definitions.get(fingerprint)

    async def seize(self, seizure: Seizure) -> Seized:
        self._check_writable()
        saga = self._sagas.get(seizure.saga_id)
        if saga is None:
            return Seized(None, False)
        now = time.time()
        live = (saga.lease_owner is not None and saga.lease_expires_at is not None
                and saga.lease_expires_at >= now)
        if saga.status not in seizure.statuses or (live and not seizure.fence_live_holder):
            return Seized(_copy_state(saga), False, saga.lease_owner, saga.lease_expires_at)
        previous = saga.lease_owner, saga.lease_expires_at
        if seizure.keep_live_expiry and live:
            pass
        elif seizure.hand_off:
            saga.lease_expires_at = now
        else:
            saga.lease_expires_at = now + seizure.lease_seconds
        saga.lease_owner = seizure.owner
        if seizure.cancel is not None:
            saga.cancel_requested = {**seizure.cancel, "fenced": previous[0] if live else None}
        if seizure.definition is not None:
            saga.definition_fingerprint, saga.definition_version = seizure.definition
        saga.updated_at = now
        saga.version += 1
        if seizure.entry is not None:
            self._record(saga.saga_id, [seizure.entry], now)
        fenced = live and previous[0] != seizure.owner
        return Seized(_copy_state(saga), True, *previous, fenced=fenced)

    async def release_fenced(self, saga_id: str, owner: str) -> bool:
        self._check_writable()
        saga = self._sagas.get(saga_id)
        now = time.time()
        if (saga is None or saga.cancel_requested is None or saga.status.is_final
                or saga.cancel_requested.get("fenced") != owner
                or saga.lease_expires_at is None or saga.lease_expires_at <= now):
            return False
        saga.lease_expires_at = now
        return True

    async def release(self, saga_id: str, owner: str) -> bool:
        self._check_writable()
        saga = self._sagas.get(saga_id)
        if saga is None or saga.lease_owner != owner:
            return False
        saga.lease_owner = None
        return True
