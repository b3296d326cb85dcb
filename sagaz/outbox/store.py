"""What the relay and ``sagaz outbox`` need from a storage's outbox table, as small protocols.

A storage that keeps an outbox says so by :class:`StorageWithOutbox` (``outbox_store()``); the
relay (:class:`~sagaz.outbox.worker.OutboxWorker`) works against :class:`OutboxStore` only, so
the PostgreSQL and the SQLite outbox share one relay and one contract
(tests/integration/outbox/test_store_contract.py). Optional capabilities are protocols of their
own: claiming given events (the optimistic send), announcing commits, deleting old SENT rows.

The guarantees every store keeps:

- a claim is exclusive until ``claim_seconds`` pass: no two workers hold one event;
- per-key order: an event is claimed only when no earlier event of its key is unsent;
- marks are fenced by the claim: a worker whose claim was taken over marks nothing;
- ``attempts`` counts delivery failures only (``mark_failed``: broker refusals and timeouts),
  never claims: a relay that crashes and an expired claim that is taken over cost no attempt, so
  relay crashes alone never dead-letter an event.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sagaz.outbox.event import OutboxEvent

__all__ = [
    "AnnouncesCommittedEvents",
    "ClaimedEvent",
    "ClaimsGivenEvents",
    "DeadLetter",
    "DeadLetterStore",
    "ManagedOutboxStore",
    "OutboxStore",
    "PrunesSentEvents",
    "ReportsBacklog",
    "StorageWithOutbox",
]


@dataclass(frozen=True, slots=True)
class ClaimedEvent:
    event: OutboxEvent
    attempts: int
    """How many deliveries of it failed so far (broker refusals, timeouts); claims not counted."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    event_id: str
    event_type: str
    key: str | None
    saga_id: str | None
    attempts: int
    last_error: str | None
    created_at: float


class OutboxStore(Protocol):
    """The relay's operations on an outbox table."""

    async def claim(self, worker: str, limit: int, claim_seconds: float) -> list[ClaimedEvent]:
        """Due events (PENDING, FAILED past their backoff, or CLAIMED with an expired claim), in
        publication order, each claimed by ``worker`` for ``claim_seconds``."""
        ...

    async def mark_sent(self, worker: str, event_ids: Sequence[str]) -> None: ...

    async def mark_failed(
        self, worker: str, failures: Sequence[tuple[str, str]], *, max_attempts: int,
        base_backoff: float, max_backoff: float,
    ) -> list[str]:
        """Count one failed delivery per ``(event_id, error)``: retried after ``base_backoff *
        2^(attempts-1)`` (at most ``max_backoff``), DEAD_LETTER once ``attempts`` reaches
        ``max_attempts``. Returns the ids that went to DEAD_LETTER."""
        ...

    async def release(self, worker: str, event_ids: Sequence[str]) -> None:
        """Give claims back untouched (the broker connection was lost): no attempt counted."""
        ...

    async def wait(self, seconds: float) -> None:
        """Return when new events may be there, at the latest after ``seconds``."""
        ...

    async def close(self) -> None: ...


class DeadLetterStore(Protocol):
    """What ``sagaz outbox`` shows and changes."""

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]: ...

    async def retry_dead(self, event_ids: Sequence[str] | None = None) -> int: ...

    async def purge_dead(self, event_ids: Sequence[str] | None = None) -> int: ...

    async def counts(self) -> dict[str, int]: ...


class ManagedOutboxStore(OutboxStore, DeadLetterStore, Protocol):
    """An outbox a storage hands out: relayed, and managed by ``sagaz outbox``."""


@runtime_checkable
class ClaimsGivenEvents(Protocol):
    """Claims exactly the given events if they are still PENDING (the optimistic send)."""

    async def claim_ids(
        self, worker: str, event_ids: Sequence[str], claim_seconds: float
    ) -> list[ClaimedEvent]: ...


@runtime_checkable
class ReportsBacklog(Protocol):
    """An outbox that counts what waits cheaply enough to be read on every metrics scrape."""

    async def backlog(self) -> tuple[int, int]:
        """(events not sent yet: pending, claimed or retrying; events in DEAD_LETTER)."""
        ...


@runtime_checkable
class PrunesSentEvents(Protocol):
    """An outbox that deletes its SENT rows itself (SQLite; PostgreSQL drops partitions)."""

    async def delete_sent(self, older_than_seconds: float) -> int:
        """Delete SENT events sent more than ``older_than_seconds`` ago; returns how many."""
        ...


@runtime_checkable
class AnnouncesCommittedEvents(Protocol):
    """A storage that calls each hook with the ids of the outbox events a commit wrote, right
    after the commit."""

    committed_event_hooks: list[Callable[[list[str]], None]]


@runtime_checkable
class StorageWithOutbox(Protocol):
    """A storage whose commits write outbox events, and that hands out their store."""

    readonly: bool

    def outbox_store(self, *, listen_dsn: str | None = None) -> ManagedOutboxStore:
        """The store of this storage's outbox. ``listen_dsn``: a direct connection to wake up on
        (PostgreSQL LISTEN); stores that need none ignore it."""
        ...
