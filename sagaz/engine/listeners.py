"""Hooks into the engine's lifecycle. Metrics, tracing and the CLI's live output are listeners;
the engine itself never calls them directly, so a saga without listeners pays nothing."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sagaz.outbox.event import OutboxEvent

__all__ = ["SagaListener", "with_listener_headers"]

logger = logging.getLogger(__name__)


class SagaListener:
    """Override what you need. Listener errors are logged and never fail a saga."""

    def saga_started(self, saga_name: str, saga_id: str, context: dict[str, Any]) -> None:
        """A saga was created (or recovery picked it up)."""

    def step_started(self, saga_name: str, saga_id: str, step: str, attempt: int) -> None:
        """An attempt of a step's action begins."""

    def step_completed(self, saga_name: str, saga_id: str, step: str, duration: float) -> None:
        """A step's completion was committed."""

    def step_failed(
        self, saga_name: str, saga_id: str, step: str, error: BaseException, final: bool
    ) -> None:
        """An attempt failed; ``final`` is True when no retry follows."""

    def compensation_started(self, saga_name: str, saga_id: str, step: str) -> None:
        """A step's compensation begins."""

    def compensation_completed(
        self, saga_name: str, saga_id: str, step: str, error: BaseException | None
    ) -> None:
        """A step's compensation ended (``error`` is set if it failed after its retries)."""

    def saga_finished(self, saga_name: str, saga_id: str, status: str, duration: float) -> None:
        """The final status was committed."""

    def saga_recovered(self, saga_name: str, saga_id: str) -> None:
        """Recovery took the saga over from an executor that died (``saga_started`` follows)."""

    def saga_interrupted(self, saga_name: str, saga_id: str, error: BaseException) -> None:
        """This process stopped running the saga before its end: its lease went to recovery,
        the storage failed, or the task was cancelled. No ``saga_finished`` follows here."""

    def outbox_headers(self, saga_name: str, saga_id: str, step: str | None) -> dict[str, str]:
        """Headers to add to the events about to be committed for ``step`` (``None``: the
        saga's lifecycle events), e.g. the W3C ``traceparent``. Called only when there are
        events; a header the step set itself is kept."""
        return {}


def with_listener_headers(
    listeners: Sequence[SagaListener], saga_name: str, saga_id: str, step: str | None,
    events: list[OutboxEvent],
) -> list[OutboxEvent]:
    """``events`` with the headers the listeners add (the trace context), before their commit."""
    if not (listeners and events):
        return events
    added: dict[str, str] = {}
    for listener in listeners:
        try:
            added.update(listener.outbox_headers(saga_name, saga_id, step))
        except Exception:
            logger.exception("listener %r failed in outbox_headers", listener,
                             extra={"action": "listener_failed"})
    if not added:
        return events
    return [OutboxEvent.restore(e.event_type, e.payload, e.key, e.saga_id,
                                {**added, **e.headers}, e.event_id, e.created_at)
            for e in events]
