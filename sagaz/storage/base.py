"""The storage interface the engine talks to.

Every state change of a saga is one :class:`UnitOfWork`: the new saga status and context, the step
rows that changed and (with the outbox) the events to publish. A storage commits a unit of work
atomically, and only if the writer still holds the saga's lease (fencing: an executor that lost its
lease to recovery can never overwrite the recovered saga). Storages are free to commit many units
of work of concurrent sagas in one database transaction (group commit); ``commit`` returns only
once the unit is durable. The audit rows of a unit (:mod:`sagaz.storage.audit`) commit with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Self, runtime_checkable

from sagaz.engine.types import SagaState, SagaStatus, StepState
from sagaz.storage.audit import AuditEntry

__all__ = ["ClosesOnExit", "SagaStorage", "UnitOfWork", "report_batch", "settle"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class UnitOfWork:
    """One atomic state change of one saga. Once committed, the engine never mutates the objects
    it holds, so a storage may keep references instead of copies."""

    saga_id: str
    owner: str
    """The lease holder making the change; the commit fails if the lease is someone else's."""
    status: SagaStatus | None = None
    context: dict[str, Any] | None = None
    steps: list[StepState] = field(default_factory=list)
    failed_step: str | None = None
    error: str | None = None
    release_lease: bool = False
    """Set with a final status: nobody needs to hold this saga any more."""
    events: list[Any] = field(default_factory=list)
    """Outbox events written in the same transaction (used by the transactional outbox)."""
    failed_attempts: list[AuditEntry] = field(default_factory=list)
    """Attempts that failed since the saga's previous unit of work (retried ones change no
    state, so their audit rows wait for the next unit instead of costing a write each)."""
    wake_at: float | None = None
    """With status WAITING: when the parked saga is due (its earliest timer; None: no timer)."""
    seen_signal_seq: int = 0
    """With status WAITING: the saga's ``signal_seq`` the executor saw. If a signal arrived since
    (the stored counter differs), the park wakes the saga at once instead: no signal is missed."""
    consumed_signals: list[str] = field(default_factory=list)
    """Ids of signals this unit consumed (a wait took them)."""
    forget_signals: bool = False
    """With a final status: delete the saga's signals (nothing will consume them any more)."""


@runtime_checkable
class SagaStorage(Protocol):
    """What the engine needs from a storage. All methods are coroutines."""

    readonly: bool

    async def create(self, state: SagaState, lease_seconds: float) -> tuple[SagaState, bool]:
        """Insert a new saga owned by ``state.lease_owner``, or return the existing saga with the
        same id and False. Never creates two sagas with one id, also under concurrent calls."""
        ...

    async def commit(self, work: UnitOfWork, lease_seconds: float) -> None:
        """Apply ``work`` atomically and durably and extend the lease; raise
        :class:`~sagaz.errors.LeaseLostError` if ``work.owner`` no longer holds the lease."""
        ...

    async def load(self, saga_id: str) -> SagaState | None:
        """The saga with its steps, or None."""
        ...

    async def renew_leases(
        self, owner: str, saga_ids: list[str], lease_seconds: float
    ) -> list[str]:
        """Extend the leases ``owner`` holds; return the ids whose lease it no longer holds."""
        ...

    async def claim_expired(
        self, owner: str, lease_seconds: float, limit: int
    ) -> list[str]:
        """Atomically take over up to ``limit`` unfinished sagas whose lease expired."""
        ...

    async def list_sagas(
        self, status: SagaStatus | None = None, limit: int = 50, offset: int = 0
    ) -> list[SagaState]:
        """Sagas, newest first, without their steps loaded."""
        ...

    async def count_by_status(self) -> dict[SagaStatus, int]:
        ...

    async def get_history(self, saga_id: str) -> list[AuditEntry]:
        """The saga's audit rows, oldest first (empty for an unknown saga)."""
        ...

    async def close(self) -> None:
        ...


class ClosesOnExit:
    """Makes a storage an async context manager: ``async with Storage(...) as storage:`` closes
    it (its connections, pool tasks or thread) when the block ends, however it ends."""

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def settle(futures: Sequence[asyncio.Future[Any]], outcomes: Sequence[Any]) -> None:
    """Hand each waiting writer of a group commit its outcome: a result, or an exception (an
    outcome that is one) to raise. Futures already done (their caller gave up) are skipped."""
    for future, outcome in zip(futures, outcomes, strict=True):
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def report_batch(hooks: Sequence[Callable[[int, float], None]], size: int, seconds: float) -> None:
    """Tell the batch hooks of a storage (:class:`~sagaz.storage.capabilities.ObservesCommits`)
    that a group commit of ``size`` writes took ``seconds``; a hook that raises is logged and
    never fails the writers of the batch."""
    for hook in hooks:
        try:
            hook(size, seconds)
        except Exception:
            logger.exception("batch hook %r failed", hook, extra={"action": "batch_hook_failed"})
