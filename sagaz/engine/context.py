"""The context object actions and compensations receive."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sagaz.outbox.event import OutboxEvent

__all__ = ["SagaContext"]


class SagaContext(dict[str, Any]):
    """A dict with the saga's data, plus who is running: ``saga_id``, ``saga_name``, ``step`` and
    ``attempt``.

    Each attempt gets its own copy: a failed attempt's changes are thrown away, a successful one's
    changes (and its returned dict) are merged into the saga's context and persisted with the
    step's completion. The same holds for the events it emits (:meth:`emit`).
    """

    __slots__ = ("attempt", "events", "saga_id", "saga_name", "step")

    def __init__(
        self, data: dict[str, Any], saga_id: str, saga_name: str, step: str, attempt: int
    ):
        super().__init__(data)
        self.saga_id = saga_id
        self.saga_name = saga_name
        self.step = step
        self.attempt = attempt
        self.events: list[OutboxEvent] = []

    def emit(
        self, event_type: str, payload: dict[str, Any] | None = None, *, key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> OutboxEvent:
        """Publish an event if and only if this step completes: it is written to the outbox in
        the same transaction that records the step as completed (a failed or retried attempt
        emits nothing), then relayed to the broker by the outbox worker. ``key`` orders events:
        those of one key are published in commit order."""
        from sagaz.outbox.event import OutboxEvent

        event = OutboxEvent(event_type, dict(payload or {}), key=key, saga_id=self.saga_id,
                            headers=dict(headers or {}))
        self.events.append(event)
        return event

    def changes_from(self, base: dict[str, Any]) -> dict[str, Any]:
        """Keys this copy added or rebound compared with ``base`` (identity, not equality: cheap,
        and it keeps concurrent sibling steps from overwriting each other with stale values)."""
        missing = object()
        return {k: v for k, v in self.items() if base.get(k, missing) is not v}
