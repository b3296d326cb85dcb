"""The consumer inbox: each consumer processes each event once in effect.

A broker delivers at least once (a relay that died between publish and mark-sent publishes
again; a consumer that died before its ack gets the message again). The inbox records
``(consumer_name, event_id)`` in the SAME transaction as the handler's own writes, so the
handler's effect and the "processed" mark commit together or not at all:

    async def reserve_stock(event, connection):     # the inbox's connection: one transaction
        await connection.execute("UPDATE stock SET ...", ...)

    inbox = ConsumerInbox(storage, "stock-service")
    await inbox.process(event.event_id, reserve_stock, event)

A handler that raises leaves no inbox row, so the redelivery runs it again. A handler without a
``connection`` parameter runs too, but outside the inbox's transaction: its effects are then only
at least once. Old rows are deleted by ``cleanup_consumer_inbox(days)`` (``sagaz worker`` runs it
daily); keep that longer than any redelivery window.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from sagaz.errors import ConfigurationError
from sagaz.outbox.brokers.base import Broker
from sagaz.outbox.event import OutboxEvent

if TYPE_CHECKING:
    from sagaz.storage.capabilities import StorageWithInbox

__all__ = ["ConsumeHook", "ConsumerInbox", "consume"]

logger = logging.getLogger(__name__)


class ConsumerInbox:
    """Exactly-once effects for the consumer ``consumer_name``.

    Concurrent :meth:`process` calls are group-committed: while one transaction runs, the next
    calls queue, then one transaction records all their inbox rows and runs their handlers one
    after the other (a handler that raises rolls that transaction back, and its events are
    then processed one by one, so only the failing event fails). Each call still returns only
    after its own commit.
    """

    def __init__(self, storage: StorageWithInbox, consumer_name: str, *,
                 max_batch: int = 200):
        if not consumer_name:
            raise ValueError("consumer_name must name the consumer, e.g. 'stock-service'")
        from sagaz.storage.capabilities import StorageWithInbox

        if not isinstance(storage, StorageWithInbox):
            raise ConfigurationError(
                f"{storage!r} keeps no consumer inbox; use a PostgreSQL storage for the inbox")
        self.consumer_name = consumer_name
        self.max_batch = max_batch
        self._outbox = storage.inbox_store()
        self._pending: list[tuple[str, Callable[[Any], Awaitable[Any]], asyncio.Future[bool]]] = []
        self._flushing = False
        self._flusher: asyncio.Task[None] | None = None  # referenced: never collected mid-run
        self.processed = 0
        self.duplicates = 0
        self.listeners: list[Callable[[str, bool], None]] = []
        """Called with (consumer name, whether the handler ran: False for a duplicate) after
        each event's commit (metrics); raising is logged and ignored."""

    async def process(
        self, event_id: str, handler: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
    ) -> bool:
        """Run ``handler(*args, **kwargs)`` unless this consumer processed ``event_id`` before;
        True when it ran. A handler with a ``connection`` parameter gets the inbox's connection:
        its writes commit atomically with the inbox row."""
        takes_connection = _takes_connection(handler)

        async def run(conn: Any) -> Any:
            if takes_connection:
                return await handler(*args, connection=conn, **kwargs)
            return await handler(*args, **kwargs)

        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((event_id, run, future))
        if not self._flushing:
            self._flushing = True
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        ran = await future
        if ran:
            self.processed += 1
        else:
            self.duplicates += 1
        for listener in self.listeners:
            try:
                listener(self.consumer_name, ran)
            except Exception:
                logger.exception("inbox listener %r failed", listener,
                                 extra={"action": "inbox_listener_failed"})
        return ran

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                try:
                    outcomes = await self._outbox.process_many(
                        self.consumer_name, [(event_id, run) for event_id, run, _ in batch])
                except Exception as exc:
                    if len(batch) == 1:
                        if not batch[0][2].done():
                            batch[0][2].set_exception(exc)
                        continue
                    # One handler failed (or the database did): process the batch one by one,
                    # so that only the failing events fail. (The failing handler thus runs a
                    # second time at once; its first run's writes were rolled back.)
                    await asyncio.gather(*(self._one(item) for item in batch))
                    continue
                for (_, _, future), ran in zip(batch, outcomes, strict=True):
                    if not future.done():
                        future.set_result(ran)
        finally:
            self._flushing = False

    async def _one(
        self, item: tuple[str, Callable[[Any], Awaitable[Any]], asyncio.Future[bool]]
    ) -> None:
        event_id, run, future = item
        try:
            [ran] = await self._outbox.process_many(self.consumer_name, [(event_id, run)])
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if not future.done():
                future.set_result(ran)


@functools.lru_cache(maxsize=256)
def _takes_connection(handler: Callable[..., Any]) -> bool:
    """Whether ``handler`` has a ``connection`` parameter (looked up once per handler: the inbox
    runs thousands of events per second through the same few handlers)."""
    return "connection" in inspect.signature(handler).parameters


class ConsumeHook(Protocol):
    """Wraps the handling of each delivered event (tracing continues the producer's trace)."""

    def handling(self, consumer_name: str, event: OutboxEvent) -> AbstractContextManager[Any]:
        """Entered before the inbox and the handler run, left after (an error propagates)."""
        ...


async def consume(
    broker: Broker, consumer_name: str, handler: Callable[..., Awaitable[Any]], *,
    stop: Awaitable[None], inbox: ConsumerInbox | None = None, prefetch: int = 100,
    hooks: Sequence[ConsumeHook] = (),
) -> None:
    """Deliver events to ``handler(event[, connection=...])`` as the durable consumer
    ``consumer_name`` until ``stop`` completes. With an ``inbox``, duplicates are dropped and the
    broker's ack follows the inbox commit; without, the handler sees every delivery. ``hooks``
    wrap each delivery (``sagaz.observability.tracing.SagaTracer`` continues the trace)."""

    async def deliver(event: OutboxEvent) -> None:
        if inbox is not None:
            await inbox.process(event.event_id, handler, event)
        else:
            await handler(event)

    async def on_event(event: OutboxEvent) -> None:
        if not hooks:
            await deliver(event)
            return
        with contextlib.ExitStack() as stack:
            for hook in hooks:
                stack.enter_context(hook.handling(consumer_name, event))
            await deliver(event)

    await broker.consume(consumer_name, on_event, stop=stop, prefetch=prefetch)
