"""Crash recovery: finish sagas whose executor died.

An executor holds a lease on each saga it runs. When the process dies the lease expires;
:func:`recover` claims such sagas (atomically, so two recoverers never take the same saga) and
finishes them with the definition they started with (:mod:`sagaz.engine.versions` says which
registered one that is): compensate by default, or run the remaining steps when the saga says
``recovery="resume"``; a saga with a cancel request is compensated. A saga whose definition is not
registered is left untouched (its claim given up) and reported as stuck.

Steps that may have been running when the executor died are treated as "may have happened" and
are compensated, so **compensations must be idempotent**: they can run for a step whose action
never got to act, and (after a crash during compensation) more than once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from sagaz.config import SagaConfig, get_config
from sagaz.engine.definition import Saga
from sagaz.engine.lease import new_owner
from sagaz.engine.operator import drive_claimed
from sagaz.engine.types import SagaStatus
from sagaz.engine.versions import choose
from sagaz.storage.control import ControlStorage

__all__ = ["RecoveryReport", "recover"]

logger = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    """What one :func:`recover` call did."""

    finished: dict[str, SagaStatus] = field(default_factory=dict)
    """saga id -> final status, for every saga this call finished."""
    unknown_definitions: dict[str, str] = field(default_factory=dict)
    """saga id -> saga name, for sagas with no definition of their name registered here."""
    stuck: dict[str, str] = field(default_factory=dict)
    """saga id -> why it was left untouched: the definition it started with is not registered
    here and none declared compatible is (unknown_definitions are stuck too)."""
    errors: dict[str, BaseException] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.finished)


async def recover(
    config: SagaConfig | None = None,
    *,
    sagas: Iterable[Saga] = (),
    batch_size: int = 100,
) -> RecoveryReport:
    """Claim every unfinished saga whose lease expired and finish it. ``sagas`` adds definitions
    to the registry's for this call."""
    config = config or get_config()
    storage = config.write_storage
    extra = list(sagas)
    owner = new_owner("recovery")
    report = RecoveryReport()
    while True:
        claimed = await storage.claim_expired(owner, config.lease_seconds, batch_size)
        if not claimed:
            break
        runs = []
        for saga_id in claimed:
            state = await storage.load(saga_id)
            if state is None or state.status.is_final:
                continue
            choice = await choose(storage, state, extra)
            saga = choice.definition
            if saga is None:
                logger.error(
                    "saga %s left untouched: %s (sagaz sagas check-versions shows every such "
                    "saga; sagaz worker --import MODULE registers definitions)", saga_id,
                    choice.explain(),
                    extra={"action": "recovery_stuck", "saga_id": saga_id,
                           "fingerprint": state.definition_fingerprint})
                report.stuck[saga_id] = choice.explain()
                if not choice.registered:
                    report.unknown_definitions[saga_id] = state.saga_name
                if isinstance(storage, ControlStorage):
                    # Untouched: an operator may resume it now; recovery looks again in a lease.
                    await storage.release(saga_id, owner)
                continue
            logger.info("recovering saga %s (%s, %s) with %s", saga_id, state.saga_name,
                        state.status, choice.runs_with,
                        extra={"action": "recovery_start", "saga_id": saga_id})
            runs.append(drive_claimed(saga, config, state, owner))
        results = await asyncio.gather(*runs, return_exceptions=True)
        for outcome in results:
            if isinstance(outcome, BaseException):
                logger.error("recovery failed: %s", outcome, exc_info=outcome,
                             extra={"action": "recovery_failed"})
                report.errors[getattr(outcome, "saga_id", "?")] = outcome
            else:
                report.finished[outcome.saga_id] = outcome.status
        if len(claimed) < batch_size:
            break
    return report
