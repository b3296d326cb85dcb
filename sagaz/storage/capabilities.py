"""What a storage offers beyond :class:`~sagaz.storage.base.SagaStorage`, as small protocols.

The worker (:class:`sagaz.Worker`), the consumer inbox and the metrics ask a storage what it can
do by these protocols instead of probing for attributes or concrete classes, so a new storage
gains a capability by implementing its methods, and nothing above it changes:

- :class:`~sagaz.outbox.store.StorageWithOutbox`: its commits write outbox events and it hands
  out their store (PostgreSQL, SQLite);
- :class:`StorageWithMaintenance`: it has scheduled database maintenance (PostgreSQL:
  partitions and the consumer-inbox cleanup);
- :class:`StorageWithInbox`: it keeps a consumer inbox (PostgreSQL);
- :class:`ObservesCommits`: its group commit reports each batch (size and seconds) to hooks;
- :class:`Pingable`: it can say cheaply whether its database answers (readiness probes);
- :class:`~sagaz.storage.control.ControlStorage`: it keeps definition shapes and lets operator
  verbs seize a saga (memory, SQLite, PostgreSQL);
- :class:`StorageWithWaits`: it keeps signals and parked sagas (durable waits: every storage of
  sagaz).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from sagaz.outbox.store import StorageWithOutbox

if TYPE_CHECKING:
    from sagaz.engine.types import SagaState
    from sagaz.storage.postgresql.maintenance import MaintenanceReport

__all__ = [
    "BatchHook",
    "InboxStore",
    "ObservesCommits",
    "Pingable",
    "StorageWithInbox",
    "StorageWithMaintenance",
    "StorageWithOutbox",
    "StorageWithWaits",
]

BatchHook = Callable[[int, float], None]
"""Called after each group-commit batch reached the database: (writes in it, seconds it took)."""


@runtime_checkable
class StorageWithMaintenance(Protocol):
    """A storage with database maintenance to run on a schedule."""

    readonly: bool

    def maintenance_target(self, dsn: str | None = None) -> str | None:
        """The connection maintenance runs on (``dsn``, a direct one, if given, else the
        storage's own), or None when this storage has nothing to maintain (read-only)."""
        ...

    async def run_maintenance(
        self, *, inbox_retention_days: int | None, lock_timeout: float, dsn: str | None = None,
    ) -> MaintenanceReport:
        """One maintenance run (it may wait seconds for table locks: never on the event loop's
        thread)."""
        ...


class InboxStore(Protocol):
    """The consumer inbox's one operation: run handlers and record their events at once."""

    async def process_many(
        self, consumer: str, items: Sequence[tuple[str, Callable[[Any], Awaitable[Any]]]],
    ) -> list[bool]: ...


@runtime_checkable
class StorageWithInbox(Protocol):
    """A storage that keeps a consumer inbox (deduplication of received events)."""

    def inbox_store(self) -> InboxStore: ...


@runtime_checkable
class ObservesCommits(Protocol):
    """A storage whose group commit calls each hook after each batch it wrote."""

    batch_hooks: list[BatchHook]


@runtime_checkable
class Pingable(Protocol):
    """A storage that can tell whether its database answers (SQLite, PostgreSQL)."""

    async def ping(self) -> None:
        """Return when a trivial query succeeded; raise StorageError when it cannot."""
        ...


@runtime_checkable
class StorageWithWaits(Protocol):
    """Durable waits: signals to sagas and parked (WAITING) sagas that become due. Times of
    timers come from the engine's clock (``now``), so tests can advance them."""

    async def signal(
        self, saga_id: str, name: str, payload: dict[str, Any], signal_id: str
    ) -> bool:
        """Keep a signal for the saga (consumed when a wait of ``name`` takes it) and wake the
        saga if it is parked. False when a signal with this id was kept already (idempotent).
        Raises :class:`~sagaz.errors.SagaNotFoundError` for an unknown saga and
        :class:`~sagaz.errors.SignalRefusedError` for a finished one."""
        ...

    async def load_many(self, saga_ids: list[str]) -> dict[str, SagaState]:
        """The sagas of these ids that exist, with their steps (and signals), by id: one read
        for a whole batch of claimed sagas."""
        ...

    async def claim_due(
        self, owner: str, lease_seconds: float, now: float, limit: int,
        saga_id: str | None = None,
    ) -> list[str]:
        """Atomically take up to ``limit`` WAITING sagas that are due (``wake_at <= now``) and
        that nobody holds (no lease, or an expired one): one indexed query, whatever the number
        of waiting sagas. ``saga_id`` restricts it to that saga."""
        ...
