"""Crash recovery: finish sagas whose executor died.

An executor holds a lease on each saga it runs. When the process dies the lease expires;
:func:`recover` claims such sagas (atomically, so two recoverers never take the same saga) and
finishes them with the registered definition: compensate by default, or run the remaining steps
when the saga says ``recovery="resume"``.

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
from sagaz.engine.definition import Saga, get_registered
from sagaz.engine.executor import SagaExecution
from sagaz.engine.lease import new_owner
from sagaz.engine.types import SagaStatus

__all__ = ["RecoveryReport", "recover"]

logger = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    """What one :func:`recover` call did."""

    finished: dict[str, SagaStatus] = field(default_factory=dict)
    """saga id -> final status, for every saga this call finished."""
    unknown_definitions: dict[str, str] = field(default_factory=dict)
    """saga id -> saga name, for sagas whose definition is not registered in this process."""
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
    definitions = {s.name: s for s in sagas}
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
            saga = definitions.get(state.saga_name) or get_registered(state.saga_name)
            if saga is None:
                logger.error(
                    "cannot recover saga %s: no definition named %r is registered; import the "
                    "module that defines it (sagaz worker --import MODULE)", saga_id,
                    state.saga_name, extra={"action": "recovery_unknown_saga", "saga_id": saga_id})
                report.unknown_definitions[saga_id] = state.saga_name
                continue
            logger.info("recovering saga %s (%s, %s)", saga_id, state.saga_name, state.status,
                        extra={"action": "recovery_start", "saga_id": saga_id})
            runs.append(SagaExecution(saga, config, state, owner, recovering=True).drive())
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
