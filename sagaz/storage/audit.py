"""What the audit log (``saga_audit_log``) records: one row per status transition of a saga
(to compensating, completed, compensated, failed), one per failed attempt of an action or
compensation, and one per step that failed, was cancelled, became uncertain or was compensated.

The saga's creation and a step's completion get no row: the saga row (``created_at``) and the
step's ``saga_steps`` row (status, attempts, start and finish times) record them and keep them,
while a row for each would cost the write path of every saga. Measured on PostgreSQL with 3-step
sagas (CPU per saga, client and server): one row per step and saga transition (five) cost about
30%, a creation row and a completion row about 13%; the one row of a completed saga is what
remains.

The rows of a transition are derived from the unit of work that makes it (:func:`entries_of`), so
every storage writes them in the same transaction as the transition itself: a fenced-out or
rolled-back write leaves no audit row behind, and a committed one always has its rows.

Failed attempts that are retried change no persisted state, so they ride along with the next
unit of work of their saga instead of costing a durable write each (``failed_attempts``). The
price: the attempts that failed just before the executor died are not recorded.

Rows never hold a saga's context or a step's result (they may hold personal data or secrets);
error messages are redacted (passwords in URLs and DSNs) and cut to :data:`MAX_ERROR_CHARS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sagaz.engine.types import StepStatus
from sagaz.redact import redact_text
from sagaz.values import storable_text

if TYPE_CHECKING:
    from sagaz.storage.base import UnitOfWork

__all__ = [
    "ATTEMPT_FAILED",
    "COMPENSATION_ATTEMPT_FAILED",
    "MAX_ERROR_CHARS",
    "AuditEntry",
    "clip_error",
    "entries_of",
    "failed_attempt",
]

MAX_ERROR_CHARS = 2_000
"""Longest error message kept in a row: enough for a message, not for a dumped payload."""

ATTEMPT_FAILED = "attempt_failed"
COMPENSATION_ATTEMPT_FAILED = "compensation_attempt_failed"
# The other events are named after the status reached: saga_<status> (saga_compensating,
# saga_completed, ...) and step_<status> (step_completed, step_failed, step_compensated, ...).


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row of a saga's history. ``details`` holds ``step``, ``attempt``, ``error_type`` and
    ``error`` where they apply."""

    event: str
    details: dict[str, Any] = field(default_factory=dict)
    at: float | None = None
    """When it happened (epoch seconds). None when written: the time of the commit recording it.
    Read back, always set."""

    @property
    def step(self) -> str | None:
        step = self.details.get("step")
        return None if step is None else str(step)

    @property
    def attempt(self) -> int | None:
        attempt = self.details.get("attempt")
        return None if attempt is None else int(attempt)

    @property
    def error(self) -> str | None:
        """The error, prefixed with its type when the row names it."""
        error = self.details.get("error")
        kind = self.details.get("error_type")
        if error is None:
            return None if kind is None else str(kind)
        return f"{kind}: {error}" if kind else str(error)


def clip_error(text: str) -> str:
    """``text`` without secrets, at most :data:`MAX_ERROR_CHARS` long, and storable everywhere.

    Redacted before it is cut, so that a cut cannot leave half a password the redaction no
    longer recognises. NUL characters and lone surrogates (an exception may carry any string)
    are escaped (values.storable_text): PostgreSQL refuses them, and a refused row would fail
    the write it rides with. Broker errors of the outbox relay go through here too."""
    text = storable_text(redact_text(text))
    if len(text) <= MAX_ERROR_CHARS:
        return text
    return text[:MAX_ERROR_CHARS - 1] + "\u2026"


def failed_attempt(
    step: str, attempt: int, error: BaseException, at: float, *, compensation: bool = False
) -> AuditEntry:
    """The row of one failed attempt of ``step``'s action (or compensation)."""
    return AuditEntry(COMPENSATION_ATTEMPT_FAILED if compensation else ATTEMPT_FAILED,
                      {"step": step, "attempt": attempt, "error_type": type(error).__name__,
                       "error": clip_error(str(error))}, at)


def entries_of(work: UnitOfWork) -> list[AuditEntry]:
    """The rows ``work`` adds to its saga's history, in the order they happened: the failed
    attempts it carries, then each step whose status it changes (but to COMPLETED), then the
    saga's new status."""
    entries = list(work.failed_attempts)
    for step in work.steps:
        if step.status is StepStatus.COMPLETED:
            continue
        details: dict[str, Any] = {"step": step.name, "attempt": step.attempts}
        error = step.compensation_error or step.error
        if error:
            details["error"] = clip_error(error)
        entries.append(AuditEntry(f"step_{step.status.value.lower()}", details))
    if work.status is not None:
        details = {"status": work.status.value}
        if work.failed_step is not None:
            details["step"] = work.failed_step
        if work.error is not None:
            details["error"] = clip_error(work.error)
        entries.append(AuditEntry(f"saga_{work.status.value.lower()}", details))
    return entries
