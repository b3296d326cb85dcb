"""Resuming parked (WAITING) sagas, and signals.

A parked saga holds no process: it is a row with a ``wake_at`` (its earliest timer, or "now"
once a signal arrived). :func:`resume_due` is what a worker calls once per interval: ONE indexed
query claims the due sagas (the lease decides who resumes which: two workers never take the same
one), then each is driven on. :func:`await_through_waits` is how ``run()``/``execute()`` and
start handles wait for a saga that parks: they resume it themselves when it is due (so a process
without a worker still finishes its sagas), and any worker may do it first.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sagaz.engine.definition import Saga, get_registered
from sagaz.engine.executor import SagaExecution
from sagaz.engine.lease import new_owner, process_owner
from sagaz.engine.outcomes import local_runs
from sagaz.engine.types import SagaResult, SagaStatus
from sagaz.errors import ConfigurationError, SagaDefinitionError, SagaNotFoundError
from sagaz.storage.capabilities import StorageWithWaits
from sagaz.values import UnstorableValueError, check_json, check_text

if TYPE_CHECKING:
    from sagaz.config import SagaConfig

__all__ = ["ResumeReport", "await_through_waits", "resume_due", "signal"]

logger = logging.getLogger(__name__)

# How often a caller awaiting a parked saga looks for a signal sent by another process (signals
# sent in this process wake it at once).
AWAIT_POLL_SECONDS = 1.0

_wakeups: weakref.WeakValueDictionary[str, asyncio.Event] = weakref.WeakValueDictionary()


def wait_storage(config: SagaConfig) -> StorageWithWaits:
    storage = config.write_storage
    if not isinstance(storage, StorageWithWaits):
        raise ConfigurationError(
            f"{storage!r} does not support durable waits and signals; use the SQLite, "
            "PostgreSQL or in-memory storage")
    return storage


@dataclass
class ResumeReport:
    """What one :func:`resume_due` call did."""

    resumed: dict[str, SagaStatus] = field(default_factory=dict)
    """saga id -> status after resuming (WAITING again when it parked on its next wait)."""
    unknown_definitions: dict[str, str] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.resumed)


async def resume_due(
    config: SagaConfig | None = None, *, sagas: Iterable[Saga] = (), limit: int = 100,
) -> ResumeReport:
    """Claim the WAITING sagas that are due (a timer fired, or a signal arrived) and drive them
    on. One indexed query per call, whatever the number of waiting sagas."""
    from sagaz.config import get_config

    config = config or get_config()
    storage = wait_storage(config)
    definitions = {s.name: s for s in sagas}
    owner = new_owner("resume")
    report = ResumeReport()
    while True:
        claimed = await storage.claim_due(owner, config.lease_seconds, config.clock.now(),
                                          limit)
        await _resume_claimed(config, definitions, owner, claimed, report)
        # Usually one query: a second only when more than ``limit`` sagas were due at once.
        if len(claimed) < limit:
            break
    return report


async def _resume_claimed(
    config: SagaConfig, definitions: dict[str, Saga], owner: str, claimed: list[str],
    report: ResumeReport,
) -> None:
    states = await wait_storage(config).load_many(claimed) if claimed else {}

    async def resume(saga_id: str) -> SagaResult | None:
        state = states.get(saga_id)
        if state is None or state.status is not SagaStatus.WAITING:
            return None
        saga = definitions.get(state.saga_name) or get_registered(state.saga_name)
        if saga is None:
            # Left claimed: the lease expires and a worker that knows the definition takes it.
            logger.error("cannot resume saga %s: no definition named %r is registered; import "
                         "the module that defines it (sagaz worker --import MODULE)", saga_id,
                         state.saga_name,
                         extra={"action": "resume_unknown_saga", "saga_id": saga_id})
            report.unknown_definitions[saga_id] = state.saga_name
            return None
        return await SagaExecution(saga, config, state, owner).drive()

    runs = [resume(saga_id) for saga_id in claimed]
    for saga_id, outcome in zip(claimed, await asyncio.gather(*runs, return_exceptions=True),
                                strict=True):
        if isinstance(outcome, BaseException):
            logger.error("resuming saga %s failed: %s", saga_id, outcome, exc_info=outcome,
                         extra={"action": "resume_failed", "saga_id": saga_id})
            report.errors[saga_id] = outcome
        elif outcome is not None:
            report.resumed[outcome.saga_id] = outcome.status


async def await_through_waits(saga: Saga, config: SagaConfig, saga_id: str) -> SagaResult:
    """The final outcome of a saga, resuming it whenever it is parked and due."""
    storage = config.write_storage
    owner = process_owner()
    delay = 0.005
    while True:
        local = local_runs.get(saga_id)
        if local is not None and local.get_loop() is asyncio.get_running_loop():
            result = await asyncio.shield(local)
            if result.status is not SagaStatus.WAITING:
                return result
            continue
        state = await storage.load(saga_id)
        if state is None:
            raise SagaNotFoundError(saga_id)
        if state.status.is_final:
            return SagaResult.from_state(state, list(saga.graph.order))
        if state.status is not SagaStatus.WAITING:  # run by someone else right now
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)
            continue
        delay = 0.005
        now = config.clock.now()
        if state.wake_at is not None and state.wake_at <= now:
            waits = wait_storage(config)
            if await waits.claim_due(owner, config.lease_seconds, now, 1, saga_id):
                loaded = await storage.load(saga_id)
                if loaded is not None and loaded.status is SagaStatus.WAITING:
                    result = await SagaExecution(saga, config, loaded, owner).drive()
                    if result.status is not SagaStatus.WAITING:
                        return result
                continue
            await asyncio.sleep(0.05)  # a worker holds it: it is being resumed
            continue
        await _sleep_until_due(config, saga_id, state.wake_at, now)


async def _sleep_until_due(
    config: SagaConfig, saga_id: str, wake_at: float | None, now: float
) -> None:
    """Until the timer is due on the engine's clock, a signal is sent in this process, or the
    poll interval passes (a signal from another process)."""
    event = _wakeups.get(saga_id)
    if event is None:
        event = asyncio.Event()
        _wakeups[saga_id] = event
    waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(event.wait())]
    if wake_at is not None:
        waiters.append(asyncio.ensure_future(config.clock.sleep(wake_at - now)))
    try:
        await asyncio.wait(waiters, timeout=AWAIT_POLL_SECONDS,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        event.clear()


async def signal(
    saga_id: str,
    name: str,
    payload: dict[str, Any] | None = None,
    *,
    signal_id: str | None = None,
    config: SagaConfig | None = None,
) -> bool:
    """Send signal ``name`` to a saga: a wait for it resumes the saga, merging ``payload`` into
    the context. Kept when the saga has not reached the wait yet. Returns False when a signal
    with this ``signal_id`` was sent already (nothing changes: duplicates are idempotent).

    Raises :class:`~sagaz.errors.SagaNotFoundError` for an unknown saga and
    :class:`~sagaz.errors.SignalRefusedError` for a finished one."""
    from sagaz.config import get_config

    config = config or get_config()
    try:
        sid = str(uuid.UUID(str(saga_id)))
    except ValueError:
        raise SagaDefinitionError(f"saga_id must be a UUID, got {saga_id!r}") from None
    if not isinstance(name, str) or not name:
        raise SagaDefinitionError(f"the signal name must be a non-empty string, got {name!r}")
    data = {} if payload is None else payload
    if not isinstance(data, dict):
        raise SagaDefinitionError(
            f"the signal payload must be a dict (merged into the context), got "
            f"{type(data).__name__}")
    try:
        check_text(name, "the signal name")
        check_json(data, "the signal payload")
        if signal_id is not None:
            check_text(signal_id, "the signal id")
    except (UnstorableValueError, TypeError, ValueError) as exc:
        raise SagaDefinitionError(f"the signal cannot be stored: {exc}") from None
    if signal_id is not None and (not isinstance(signal_id, str) or not signal_id):
        raise SagaDefinitionError(f"signal_id must be a non-empty string, got {signal_id!r}")
    stored = await wait_storage(config).signal(sid, name, data, signal_id or str(uuid.uuid4()))
    event = _wakeups.get(sid)
    if event is not None:
        event.set()
    logger.info("signal %s %s saga %s", name, "sent to" if stored else "already sent to", sid,
                extra={"action": "saga_signalled", "saga_id": sid, "signal": name})
    return stored
