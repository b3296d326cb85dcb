"""What versioning and the operator verbs need from a storage, beyond :class:`SagaStorage`.

* the shapes of the definitions sagas started with (:meth:`ControlStorage.record_definition`),
  so that what differs from today's definitions can be told;
* :meth:`ControlStorage.seize`: take a saga's lease for an operator verb, atomically with the
  verb's audit row (and, for ``cancel``, its request; for ``resume``, the definition switch).
  Taking the lease is what fences the executor that held it: its next commit is refused;
* :meth:`ControlStorage.release`: a recovery pass that leaves a saga alone gives up its claim.

Every built-in storage implements it (memory, SQLite, PostgreSQL); the contract tests in
``tests/integration/storage_contract`` run the same bodies against each.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from sagaz.engine.fingerprint import DefinitionShape
from sagaz.engine.types import SagaState, SagaStatus
from sagaz.storage.audit import AuditEntry
from sagaz.storage.base import SagaStorage

__all__ = ["ControlStorage", "Seized", "Seizure", "record_shape", "stopped_after_fence"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Seizure:
    """An operator verb's claim on one saga."""

    saga_id: str
    owner: str
    """The verb's lease owner id; it holds the saga once seized."""
    lease_seconds: float
    statuses: frozenset[SagaStatus]
    """Seize only a saga in one of these statuses."""
    entry: AuditEntry | None
    """The verb's row of the saga's history (who, why), written in the same transaction."""
    fence_live_holder: bool = False
    """Seize even while another owner's lease is live (cancel): that owner is fenced. Without
    it a saga whose lease is live is left alone."""
    keep_live_expiry: bool = False
    """With ``fence_live_holder``: keep the fenced holder's expiry, so that the verb (or any
    worker) takes over no earlier than that holder could still be acting in good faith."""
    hand_off: bool = False
    """Let the lease expire at once (unless kept above): any worker's recovery takes over."""
    cancel: dict[str, Any] | None = None
    """Record this cancel request on the saga (with ``fenced``: the live holder it fenced, which
    may then hand over early with :meth:`ControlStorage.release_fenced`)."""
    definition: tuple[str, str | None] | None = None
    """Switch the saga to this (fingerprint, version): the operator migrates it."""


@dataclass(frozen=True, slots=True)
class Seized:
    """The outcome of :meth:`ControlStorage.seize`."""

    state: SagaState | None
    """The saga after the seizure (or as found, when not seized); None if it does not exist."""
    seized: bool
    previous_owner: str | None = None
    previous_expires_at: float | None = None
    fenced: bool = False
    """A live holder was fenced: it may still be inside a step until ``previous_expires_at``."""


@runtime_checkable
class ControlStorage(Protocol):
    async def record_definition(self, shape: DefinitionShape) -> None:
        """Keep ``shape`` under its fingerprint (idempotent: a known fingerprint is left as is)."""
        ...

    async def load_definition(self, fingerprint: str) -> DefinitionShape | None:
        ...

    async def seize(self, seizure: Seizure) -> Seized:
        ...

    async def release_fenced(self, saga_id: str, owner: str) -> bool:
        """``owner``, fenced by a cancel request, has stopped: the lease it was left to run out
        ends now, so the verb (or a worker) compensates at once. False if nothing was waiting
        for ``owner``."""
        ...

    async def release(self, saga_id: str, owner: str) -> bool:
        """Give up ``owner``'s lease of a saga, leaving its expiry: nobody holds it, and recovery
        looks at it again once that expiry passes. False if ``owner`` did not hold it."""
        ...


async def stopped_after_fence(storage: SagaStorage, saga_id: str, owner: str) -> None:
    """What an executor whose lease was taken calls once it has stopped: if a cancel fenced it,
    the verb waiting for its lease to run out need not wait. Best effort: without it the verb
    waits that lease out."""
    if isinstance(storage, ControlStorage):
        try:
            await storage.release_fenced(saga_id, owner)
        except Exception:
            logger.warning("could not tell a cancel that saga %s stopped", saga_id,
                           exc_info=True, extra={"action": "fence_release_failed",
                                                 "saga_id": saga_id})


# Fingerprints each storage has recorded in this process: a saga's start records its
# definition's shape once per storage, not once per saga.
_recorded: weakref.WeakKeyDictionary[SagaStorage, set[str]] = weakref.WeakKeyDictionary()


async def record_shape(storage: SagaStorage, shape: DefinitionShape) -> None:
    """Keep ``shape`` in ``storage`` (once per process), so that what differs can be told later."""
    known = _recorded.get(storage)
    if known is not None and shape.fingerprint in known:
        return
    if isinstance(storage, ControlStorage):
        await storage.record_definition(shape)
    if known is None:
        known = _recorded[storage] = set()
    known.add(shape.fingerprint)
