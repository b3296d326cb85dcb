"""What the outbox relay needs from a message broker, and what consumers get from one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

from sagaz.outbox.event import OutboxEvent

__all__ = ["Broker", "EventHandler"]

EventHandler = Callable[[OutboxEvent], Awaitable[None]]
"""A consumer's handler. Returning acknowledges the message; raising leaves it for redelivery."""


@runtime_checkable
class Broker(Protocol):
    """A connection to one broker. Every method may be retried after a connection loss: the
    implementation reconnects by itself on the next call."""

    async def connect(self) -> None:
        """Open the connection and declare what publishing needs (exchange, stream...)."""
        ...

    async def publish_batch(self, events: Sequence[OutboxEvent]) -> list[BaseException | None]:
        """Publish ``events`` and wait for the broker's acknowledgement of each (publisher
        confirm, XADD reply, JetStream ack, Kafka acks=all). One outcome per event, in order:
        None when the broker has it durably, else the error. Raises only when the connection
        itself is lost (nothing of the batch may be assumed published)."""
        ...

    async def consume(
        self, consumer_name: str, handler: EventHandler, *, stop: Awaitable[None],
        prefetch: int = 100,
    ) -> None:
        """Deliver events to ``handler`` as the durable consumer ``consumer_name`` (a queue,
        a consumer group, a durable JetStream consumer) until ``stop`` completes. A message is
        acknowledged only after the handler returned; when it raises, the message is delivered
        again later."""
        ...

    async def close(self) -> None:
        ...
