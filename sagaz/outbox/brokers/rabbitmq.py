"""RabbitMQ through aio-pika: a durable topic exchange, persistent messages, publisher confirms.

Routing key = event type. Each consumer name owns a durable queue ``<exchange>.<consumer_name>``
bound to the exchange. RabbitMQ keeps a message only for the queues that exist when it is
published, so name the consumers in ``queues=`` when events must wait for a consumer that has
not started yet (the relay usually knows them); ``consume`` declares its own queue too. An event
no queue is bound for goes to the durable queue ``<exchange>.unrouted`` (the exchange's
alternate exchange), not nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aio_pika.connection
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)

from sagaz.outbox.brokers import (
    Backoff,
    BrokerAckTimeout,
    BrokerConnectionError,
    consume_with_reconnect,
    first_or_stop,
    gather_unless_lost,
    log_malformed,
    redact_url,
    run_handler,
)
from sagaz.outbox.brokers.base import EventHandler
from sagaz.outbox.event import OutboxEvent

__all__ = ["RabbitMQBroker"]

logger = logging.getLogger(__name__)

# What a lost or unusable connection/channel looks like in aio-pika/aiormq. A channel closed by the
# server (e.g. the exchange was deleted) is handled the same way: reconnecting redeclares.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
    OSError,
)


class _ReportedByTheBroker(logging.Filter):
    """aiormq logs an ERROR for every connection attempt that fails, then raises; this module
    turns that exception into a BrokerConnectionError that its caller reports (once per outage,
    in the relay). The aiormq record would say it again at every retry, with the URL's host
    only: drop exactly that record, keep every other aiormq message."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("error when creating transport")


logging.getLogger("aiormq.connection").addFilter(_ReportedByTheBroker())


class RabbitMQBroker:
    """Publishes to the durable topic exchange ``exchange`` on ``url``."""

    def __init__(
        self,
        url: str = "amqp://guest:guest@127.0.0.1:5672/",
        exchange: str = "sagaz.events",
        *,
        binding_key: str = "#",
        queues: Sequence[str] = (),
        publish_timeout: float = 30.0,
        redelivery_delay: float = 0.5,
        reconnect_max_delay: float = 5.0,
    ) -> None:
        self.url = url
        self.exchange_name = exchange
        self.binding_key = binding_key
        self.queues = tuple(queues)
        self.publish_timeout = publish_timeout
        self.redelivery_delay = redelivery_delay
        self.reconnect_max_delay = reconnect_max_delay
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._lock = asyncio.Lock()
        self._lost = asyncio.Event()  # set (and replaced) when the publisher connection closes
        # Connections of running consumers, so close() (and tests) can reach them.
        self._consumer_connections: set[AbstractConnection] = set()

    def __repr__(self) -> str:
        return f"RabbitMQBroker({redact_url(self.url)!r}, exchange={self.exchange_name!r})"

    def queue_name(self, consumer_name: str) -> str:
        return f"{self.exchange_name}.{consumer_name}"

    @property
    def unrouted_name(self) -> str:
        """The alternate exchange and its queue, which keep the events no queue was bound for."""
        return f"{self.exchange_name}.unrouted"

    async def connect(self) -> None:
        await self._publisher_exchange()

    async def _publisher_exchange(self) -> AbstractExchange:
        async with self._lock:
            if (self._exchange is not None and self._connection is not None
                    and not self._connection.is_closed and self._channel is not None
                    and not self._channel.is_closed):
                return self._exchange
            await self._drop_publisher()
            # aio_pika.connect() in two steps, so that a connection that failed can be closed
            # here: left to its __del__, its close() is scheduled on a loop that may be ending
            # ("coroutine 'Connection.close' was never awaited" at a worker's exit).
            connection = aio_pika.Connection(aio_pika.connection.make_url(self.url))
            try:
                await connection.connect()
            except _CONNECTION_ERRORS as exc:
                await connection.close()
                raise BrokerConnectionError(
                    "rabbitmq", f"cannot connect to {redact_url(self.url)}: {exc}") from exc
            try:
                channel = await connection.channel(publisher_confirms=True)
                exchange = await self._declare(channel)
                for consumer_name in self.queues:
                    await self._declare_queue(channel, exchange, consumer_name)
            except BaseException:
                await connection.close()
                raise
            connection.close_callbacks.add(lambda *_: self._signal_lost())
            self._connection, self._channel, self._exchange = connection, channel, exchange
            logger.info("connected to RabbitMQ %s", redact_url(self.url),
                        extra={"action": "broker.connected", "broker": "rabbitmq",
                               "exchange": self.exchange_name})
            return exchange

    def _signal_lost(self) -> None:
        lost, self._lost = self._lost, asyncio.Event()
        lost.set()

    async def _declare(self, channel: AbstractChannel) -> AbstractExchange:
        # An event no consumer queue is bound for is not dropped: the exchange's alternate
        # exchange routes it to the durable queue "<exchange>.unrouted" (to inspect, or to
        # shovel once the consumer exists). The outbox promised the event would leave.
        spare = await channel.declare_exchange(self.unrouted_name, aio_pika.ExchangeType.FANOUT,
                                               durable=True)
        queue = await channel.declare_queue(self.unrouted_name, durable=True)
        await queue.bind(spare)
        return await channel.declare_exchange(
            self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True,
            arguments={"alternate-exchange": self.unrouted_name})

    async def _declare_queue(
        self, channel: AbstractChannel, exchange: AbstractExchange, consumer_name: str
    ) -> AbstractQueue:
        queue = await channel.declare_queue(self.queue_name(consumer_name), durable=True)
        await queue.bind(exchange, routing_key=self.binding_key)
        return queue

    async def _drop_publisher(self) -> None:
        connection, self._connection, self._channel, self._exchange = (
            self._connection, None, None, None)
        if connection is not None and not connection.is_closed:
            # It is being discarded because it is broken: its errors do not matter.
            with contextlib.suppress(Exception):
                await connection.close()

    async def publish_batch(self, events: Sequence[OutboxEvent]) -> list[BaseException | None]:
        if not events:
            return []
        await self._publisher_exchange()
        assert self._channel is not None
        # Every message is written before any confirm is awaited: the confirms of a batch arrive
        # together (RabbitMQ batches its fsyncs), so a batch costs about one round trip.
        # The publishing is CPU-bound in the client, so it goes straight to aiormq's channel
        # with prebuilt properties (aio-pika's Message/Exchange.publish layer costs ~10% more).
        # mandatory=False: an event no queue is bound for goes to the alternate exchange.
        try:
            channel = await self._channel.get_underlay_channel()
        except _CONNECTION_ERRORS as exc:
            await self._drop_publisher()
            raise BrokerConnectionError("rabbitmq", f"channel lost: {exc!r}") from exc
        publishes = [
            channel.basic_publish(event.body(), exchange=self.exchange_name,
                                  routing_key=event.event_type, properties=_properties(event),
                                  mandatory=False)
            for event in events
        ]
        lost = self._lost
        try:
            async with asyncio.timeout(self.publish_timeout):
                # Confirms of a closed connection never come: do not wait for the timeout.
                results = await gather_unless_lost(publishes, lost)
                if results is None:
                    raise aiormq.exceptions.ConnectionClosed(0, "closed while publishing")
        except aiormq.exceptions.ConnectionClosed as exc:
            await self._drop_publisher()
            raise BrokerConnectionError(
                "rabbitmq", f"connection lost while publishing: {exc!r}") from exc
        except TimeoutError as exc:
            # Confirms that never come mean a blocked or half-dead connection: start over.
            await self._drop_publisher()
            raise BrokerAckTimeout(
                "rabbitmq", f"no publisher confirms within {self.publish_timeout:g}s") from exc
        outcomes: list[BaseException | None] = []
        for result in results:
            if isinstance(result, _CONNECTION_ERRORS):
                await self._drop_publisher()
                raise BrokerConnectionError(
                    "rabbitmq", f"connection lost while publishing: {result!r}") from result
            if isinstance(result, asyncio.CancelledError):
                raise result
            outcomes.append(result if isinstance(result, BaseException) else None)
        return outcomes

    async def consume(
        self, consumer_name: str, handler: EventHandler, *, stop: Awaitable[None],
        prefetch: int = 100,
    ) -> None:
        await consume_with_reconnect(
            "rabbitmq", consumer_name,
            lambda stopped, backoff: self._consume_once(
                consumer_name, handler, stopped, prefetch, backoff),
            _CONNECTION_ERRORS, stop=stop, max_delay=self.reconnect_max_delay)

    async def _consume_once(
        self, consumer_name: str, handler: EventHandler, stopped: asyncio.Future[None],
        prefetch: int, backoff: Backoff,
    ) -> None:
        connection = await aio_pika.connect(self.url)
        self._consumer_connections.add(connection)
        lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_: lost.set())
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=prefetch)
            exchange = await self._declare(channel)
            queue = await self._declare_queue(channel, exchange, consumer_name)
            # Messages are handled one at a time, in queue order: the callback only hands over.
            inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
            await queue.consume(inbox.put, no_ack=False)
            backoff.reset()
            logger.info("RabbitMQ consumer %s started on %s", consumer_name,
                        self.queue_name(consumer_name),
                        extra={"action": "broker.consumer_started", "broker": "rabbitmq",
                               "consumer": consumer_name})
            while not stopped.done():
                got, message = await first_or_stop(_next(inbox, lost), stopped)
                if not got:
                    return
                if message is None:
                    raise ConnectionError("connection closed")
                await self._handle(consumer_name, handler, message)
        finally:
            self._consumer_connections.discard(connection)
            if not connection.is_closed:
                # Unacknowledged messages (prefetched, not handled) go back to the queue.
                await connection.close()

    async def _handle(
        self, consumer_name: str, handler: EventHandler, message: AbstractIncomingMessage
    ) -> None:
        try:
            event = OutboxEvent.from_message(message.body, _headers(message.headers))
        except (KeyError, ValueError) as exc:
            # It can never be handled; requeueing would loop forever. A dead-letter exchange
            # configured on the queue (policy) receives it.
            log_malformed("rabbitmq", consumer_name,
                          f"rejects a malformed message {message.message_id}", exc)
            await message.reject(requeue=False)
            return
        if await run_handler("rabbitmq", consumer_name, handler, event):
            await message.ack()
        else:
            # A requeued message comes straight back: the pause keeps a failing handler from
            # spinning on it.
            await asyncio.sleep(self.redelivery_delay)
            await message.nack(requeue=True)

    async def close(self) -> None:
        async with self._lock:
            await self._drop_publisher()
        for connection in list(self._consumer_connections):
            await connection.close()

    async def destroy(self, consumer_names: Sequence[str] = ()) -> None:
        """Admin/teardown operation, not part of the ``Broker`` protocol: deletes the exchange,
        the ``<exchange>.unrouted`` exchange and queue, and the queues ``<exchange>.<consumer>``
        of ``queues`` and ``consumer_names``, so it deletes the events they hold. What does not
        exist is skipped. Uses a connection of its own; consumers should be stopped first."""
        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel()
            for consumer_name in dict.fromkeys((*self.queues, *consumer_names)):
                await channel.queue_delete(self.queue_name(consumer_name))
            await channel.exchange_delete(self.exchange_name)
            await channel.queue_delete(self.unrouted_name)
            await channel.exchange_delete(self.unrouted_name)


async def _next(
    inbox: asyncio.Queue[AbstractIncomingMessage], lost: asyncio.Event
) -> AbstractIncomingMessage | None:
    """The next delivered message, or None when the connection closed first."""
    if not inbox.empty():
        return inbox.get_nowait()
    get = asyncio.ensure_future(inbox.get())
    closed = asyncio.ensure_future(lost.wait())
    try:
        await asyncio.wait({get, closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        closed.cancel()
        if not get.done():
            get.cancel()
    return get.result() if get.done() and not get.cancelled() else None


def _properties(event: OutboxEvent) -> aiormq.spec.Basic.Properties:
    return aiormq.spec.Basic.Properties(
        content_type="application/json",
        delivery_mode=2,  # persistent: written to disk before the confirm
        message_id=event.event_id,
        message_type=event.event_type,
        timestamp=datetime.fromtimestamp(event.created_at, UTC),
        headers=dict(event.message_headers()),
    )


def _headers(raw: dict[str, Any]) -> dict[str, str]:
    """AMQP header table -> str values (long strings may arrive as bytes)."""
    return {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in raw.items()}
