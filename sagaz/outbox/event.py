"""The event envelope: what a step emits, what the outbox stores, what a broker carries."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sagaz.values import UnstorableValueError, check_json, check_text

__all__ = ["OutboxEvent"]


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One event. ``event_id`` identifies it end to end: the broker message carries it (message
    id and header), and consumers deduplicate on it (the consumer inbox)."""

    event_type: str
    """What happened, e.g. ``OrderReserved``; also the routing key / subject suffix."""
    payload: dict[str, Any]
    key: str | None = None
    """Ordering key (the aggregate id): events of one key are published in commit order."""
    saga_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if not self.event_type or not isinstance(self.event_type, str):
            raise ValueError("event_type must be a non-empty string, e.g. 'OrderReserved'")
        # The storage rules (sagaz.values) hold for what an event carries, so an event
        # a step emits can never be what makes the step's commit fail.
        check_text(self.event_type, "the event_type")
        if isinstance(self.key, str):
            check_text(self.key, f"the key of event {self.event_type!r}")
        try:
            check_json(self.payload, f"the payload of event {self.event_type!r}")
        except UnstorableValueError:
            raise
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"the payload of event {self.event_type!r} is not JSON-serialisable ({exc}); "
                "events are stored and sent as JSON") from exc
        for name, value in self.headers.items():
            check_text(f"{name}{value}", f"the header {name!r} of event {self.event_type!r}")

    def message_headers(self) -> dict[str, str]:
        """Headers every broker message carries: the event's own, plus its identity."""
        headers = dict(self.headers)
        headers["event_id"] = self.event_id
        headers["event_type"] = self.event_type
        if self.saga_id is not None:
            headers["saga_id"] = self.saga_id
        if self.key is not None:
            headers["key"] = self.key
        return headers

    def body(self) -> bytes:
        """The message body: the payload as JSON."""
        return json.dumps(self.payload, separators=(",", ":")).encode()

    @classmethod
    def restore(
        cls, event_type: str, payload: dict[str, Any], key: str | None, saga_id: str | None,
        headers: dict[str, str], event_id: str, created_at: float,
    ) -> OutboxEvent:
        """An event read back from storage or a message: validated when it was made, so not
        again (the relay restores tens of thousands per second)."""
        event = object.__new__(cls)
        for name, value in (("event_type", event_type), ("payload", payload), ("key", key),
                            ("saga_id", saga_id), ("headers", headers),
                            ("event_id", event_id), ("created_at", created_at)):
            object.__setattr__(event, name, value)
        return event

    @classmethod
    def from_message(cls, body: bytes, headers: dict[str, str]) -> OutboxEvent:
        """Rebuild the event from a received message (the inverse of body + headers)."""
        own = {k: v for k, v in headers.items()
               if k not in ("event_id", "event_type", "saga_id", "key")}
        return cls.restore(headers["event_type"], json.loads(body), headers.get("key"),
                           headers.get("saga_id"), own, headers["event_id"], time.time())
