"""Value types shared by the engine and the storages: statuses, persisted state, results."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "FailureStrategy",
    "SagaResult",
    "Signal",
    "SagaState",
    "SagaStatus",
    "StepRecord",
    "StepState",
    "StepStatus",
]

JSONDict = dict[str, Any]


class SagaStatus(StrEnum):
    """Lifecycle of a saga. COMPLETED, COMPENSATED and FAILED are final. WAITING is a parked
    saga: it waits for a signal or a timer and holds no process (any worker resumes it)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    WAITING = "WAITING"
    COMPENSATING = "COMPENSATING"
    COMPLETED = "COMPLETED"
    COMPENSATED = "COMPENSATED"
    FAILED = "FAILED"

    @property
    def is_final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED})


class StepStatus(StrEnum):
    """What is known about one step.

    UNKNOWN means "may have happened": its executor died while the step could have been running, so
    recovery compensates it (which is why compensations must be idempotent).
    """

    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"
    COMPENSATED = "COMPENSATED"
    COMPENSATION_FAILED = "COMPENSATION_FAILED"


class FailureStrategy(StrEnum):
    """What happens to running siblings when a step of a parallel level fails."""

    FAIL_FAST = "FAIL_FAST"
    """Cancel running siblings, then compensate what completed."""
    WAIT_ALL = "WAIT_ALL"
    """Let running siblings finish, then compensate everything that completed."""
    FAIL_FAST_WITH_GRACE = "FAIL_FAST_WITH_GRACE"
    """Give running siblings ``grace_seconds`` to finish, then cancel the rest."""


@dataclass(slots=True)
class StepState:
    """The persisted state of one step of one saga."""

    name: str
    status: StepStatus = StepStatus.PENDING
    result: JSONDict | None = None
    error: str | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    compensation_error: str | None = None

    def copy(self) -> StepState:
        return StepState(
            self.name,
            self.status,
            self.result,
            self.error,
            self.attempts,
            self.started_at,
            self.finished_at,
            self.compensation_error,
        )


@dataclass(frozen=True, slots=True)
class Signal:
    """A signal sent to a saga and not consumed yet (kept until a wait of its name takes it)."""

    signal_id: str
    name: str
    payload: JSONDict
    created_at: float = 0.0


@dataclass(slots=True)
class SagaState:
    """The persisted state of one saga: enough for recovery to finish it after a crash."""

    saga_id: str
    saga_name: str
    status: SagaStatus
    context: JSONDict
    steps: dict[str, StepState] = field(default_factory=dict)
    failed_step: str | None = None
    error: str | None = None
    idempotency_key: str | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    version: int = 0
    definition_fingerprint: str | None = None
    """The fingerprint of the definition the saga started with (None: started before sagas
    recorded it); see :mod:`sagaz.engine.fingerprint`."""
    definition_version: str | None = None
    cancel_requested: JSONDict | None = None
    """Set by ``sagaz.cancel``: who asked, why and when; the saga is compensated."""
    wake_at: float | None = None
    """A WAITING saga is due (a timer fires, or a signal arrived) from then on."""
    signal_seq: int = 0
    """Counts the signals ever sent to the saga: a park that saw fewer is woken at once."""
    signals: list[Signal] = field(default_factory=list)
    """The signals not consumed yet, oldest first (loaded for unfinished sagas)."""

    def step(self, name: str) -> StepState:
        found = self.steps.get(name)
        if found is None:
            found = self.steps[name] = StepState(name)
        return found

    def step_status(self, name: str) -> StepStatus:
        found = self.steps.get(name)
        return StepStatus.PENDING if found is None else found.status


@dataclass(slots=True)
class StepRecord:
    """What one step did during a saga, as reported in :class:`SagaResult`."""

    name: str
    status: StepStatus
    attempts: int
    started_at: float | None
    finished_at: float | None
    error: str | None = None
    compensation_error: str | None = None

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


@dataclass(slots=True)
class SagaResult:
    """Outcome of :meth:`Saga.execute`; never raised, always returned."""

    saga_id: str
    saga_name: str
    status: SagaStatus
    context: JSONDict
    steps: list[StepRecord]
    started_at: float
    finished_at: float
    failed_step: str | None = None
    error: BaseException | None = None
    error_message: str | None = None
    compensation_errors: dict[str, BaseException] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.status is SagaStatus.COMPLETED

    @property
    def duration(self) -> float:
        return self.finished_at - self.started_at

    @staticmethod
    def from_state(state: SagaState, order: list[str]) -> SagaResult:
        """Build a result from persisted state (used when the saga ran in another executor)."""
        records = []
        for name in order:
            s = state.steps.get(name) or StepState(name)
            records.append(
                StepRecord(
                    s.name, s.status, s.attempts, s.started_at, s.finished_at, s.error,
                    s.compensation_error,
                )
            )
        return SagaResult(
            saga_id=state.saga_id,
            saga_name=state.saga_name,
            status=state.status,
            context=dict(state.context),
            steps=records,
            started_at=state.created_at,
            finished_at=state.updated_at,
            failed_step=state.failed_step,
            error_message=state.error,
        )
