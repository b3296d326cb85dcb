"""The in-process broker of the embedded default. Nothing survives a restart; use a real broker
for anything that must.

Two APIs on one object: the ``Broker`` protocol (``publish_batch``/``consume``, what the outbox
relay and consumers use) and the older topic API (``publish``/``subscribe``: handlers called in
the publishing task). Whatever is published through either reaches both kinds of receiver.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sagaz.outbox.brokers import as_future, first_or_stop, run_handler
from sagaz.outbox.brokers.base import EventHandler
from sagaz.outbox.event import OutboxEvent

__all__ = ["InMemoryBroker"]

Handler = Callable[[str, dict[str, Any], dict[str, str]], Awaitable[None] | None]


class InMemoryBroker:
    """Topic -> handlers, and consumer name -> queue of events.

    ``publish`` returns after every subscribed handler ran (its "acknowledgement").
    ``publish_batch`` appends to every consumer's queue; a consumer name seen for the first time
    starts with every event published so far (like a new group on a retained stream)."""

    def __init__(self, *, redelivery_delay: float = 0.05) -> None:
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self.published: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.redelivery_delay = redelivery_delay
        self._log: list[OutboxEvent] = []
        self._queues: dict[str, asyncio.Queue[OutboxEvent]] = {}

    # -- the topic API -----------------------------------------------------------------------

    def subscribe(self, topic: str, handler: Handler) -> None:
        self._handlers[topic].append(handler)

    async def publish(
        self, topic: str, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        hdrs = dict(headers or {})
        try:
            event = _event_from_topic(topic, payload, hdrs)
        except ValueError:
            # The topic API never required JSON payloads; such a message only reaches
            # subscribers, as it always did.
            pass
        else:
            self._enqueue(event)
        await self._deliver_to_subscribers(topic, payload, hdrs)

    async def _deliver_to_subscribers(
        self, topic: str, payload: dict[str, Any], hdrs: dict[str, str]
    ) -> None:
        self.published.append((topic, payload, hdrs))
        for handler in list(self._handlers.get(topic, ())):
            outcome = handler(topic, payload, hdrs)
            if asyncio.iscoroutine(outcome):
                await outcome

    # -- the Broker protocol -----------------------------------------------------------------

    async def connect(self) -> None:
        return None

    async def publish_batch(self, events: Sequence[OutboxEvent]) -> list[BaseException | None]:
        outcomes: list[BaseException | None] = []
        for event in events:
            self._enqueue(event)
            try:
                await self._deliver_to_subscribers(
                    event.event_type, event.payload, event.message_headers())
            except Exception as exc:  # a subscriber's failure is that event's outcome
                outcomes.append(exc)
            else:
                outcomes.append(None)
        return outcomes

    def _enqueue(self, event: OutboxEvent) -> None:
        self._log.append(event)
        for queue in self._queues.values():
            queue.put_nowait(event)

    def _queue(self, consumer_name: str) -> asyncio.Queue[OutboxEvent]:
        queue = self._queues.get(consumer_name)
        if queue is None:
            queue = self._queues[consumer_name] = asyncio.Queue()
            for event in self._log:
                queue.put_nowait(event)
        return queue

    async def consume(
        self, consumer_name: str, handler: EventHandler, *, stop: Awaitable[None],
        prefetch: int = 100,
    ) -> None:
        stopped = as_future(stop)
        queue = self._queue(consumer_name)
        while not stopped.done():
            got, event = await first_or_stop(queue.get(), stopped)
            if not got or event is None:
                return
            if not await run_handler("memory", consumer_name, handler, event):
                # Back of the queue after a pause, as a real broker redelivers "later".
                asyncio.get_running_loop().call_later(
                    self.redelivery_delay, queue.put_nowait, event)

    async def close(self) -> None:
        self._handlers.clear()

    async def destroy(self, consumer_names: Sequence[str] = ()) -> None:
        """Admin/teardown operation, not part of the ``Broker`` protocol: deletes the events it
        holds (what was published so far and every consumer's undelivered events). Subscribers
        and running consumers stay; ``consumer_names`` need not be given (all queues are
        emptied)."""
        self._log.clear()
        self.published.clear()
        for queue in self._queues.values():
            while not queue.empty():
                queue.get_nowait()


def _event_from_topic(topic: str, payload: dict[str, Any], headers: dict[str, str]) -> OutboxEvent:
    """The envelope of a topic-API message: headers naming an identity (as message_headers()
    writes them) are honoured, the rest stay the event's own headers."""
    if "event_id" in headers:
        return OutboxEvent.from_message(
            OutboxEvent(event_type=topic, payload=payload).body(),
            {**headers, "event_type": headers.get("event_type", topic)})
    return OutboxEvent(event_type=topic, payload=payload, headers=dict(headers))
