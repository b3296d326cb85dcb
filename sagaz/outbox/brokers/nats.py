"""NATS JetStream through nats-py: one file-backed stream over ``<subject_prefix>.>``.

The subject of an event is ``<subject_prefix>.<event_type>``. Every message carries
``Nats-Msg-Id: <event_id>``, so a batch retried within the stream's duplicate window is stored
once. A batch is written in full before its acks are awaited (they arrive concurrently). Each
consumer name is a durable pull consumer: ack after the handler, nak with a delay when it raised;
an unacknowledged message is redelivered after ``ack_wait``. A new durable starts with what the
stream holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Sequence

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    PubAck,
    StorageType,
    StreamConfig,
)

from sagaz.errors import ConfigurationError
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

__all__ = ["NATSBroker"]

logger = logging.getLogger(__name__)

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.ConnectionClosedError,
    nats.errors.StaleConnectionError,
    nats.errors.NoServersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.ConnectionReconnectingError,
    ConnectionError,
    OSError,
)
_PUBLISH_LOST: tuple[type[BaseException], ...] = _CONNECTION_ERRORS
_CONSUMER_LOST: tuple[type[BaseException], ...] = (*_CONNECTION_ERRORS, BrokerConnectionError)

# Tries of a client's first connection beyond the first (0.5 s apart); reconnects of a connected
# client are unlimited.
_FIRST_CONNECT_RETRIES = 2

# Headers that NATS would alter in transit (it trims values and rewrites CR/LF, keys are HTTP
# tokens) travel JSON-encoded in this one header instead, so the envelope arrives unchanged.
_ENVELOPE_HEADER = "Sagaz-Headers"
_HEADER_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SUBJECT_TOKEN = re.compile(r"[^\s.*>]+")
_DURABLE_NAME = re.compile(r"[A-Za-z0-9_-]+")


class NATSBroker:
    """Publishes to the JetStream stream ``stream`` on ``url``."""

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        stream: str = "SAGAZ",
        subject_prefix: str = "sagaz.events",
        *,
        ack_wait: float = 30.0,
        nak_delay: float = 1.0,
        duplicate_window: float = 120.0,
        publish_timeout: float = 30.0,
        fetch_timeout: float = 1.0,
        reconnect_max_delay: float = 5.0,
    ) -> None:
        self.url = url
        self.stream = stream
        self.subject_prefix = subject_prefix
        self.ack_wait = ack_wait
        self.nak_delay = nak_delay
        self.duplicate_window = duplicate_window
        self.publish_timeout = publish_timeout
        self.fetch_timeout = fetch_timeout
        self.reconnect_max_delay = reconnect_max_delay
        self._nc: NATSClient | None = None
        self._js: JetStreamContext | None = None
        self._lock = asyncio.Lock()
        self._consumer_clients: set[NATSClient] = set()
        # Set when the publisher connection drops. Acks whose connection dropped never arrive
        # (the replies are not resent), so in-flight batches stop waiting for them at once.
        self._lost = asyncio.Event()

    def _signal_lost(self) -> None:
        lost, self._lost = self._lost, asyncio.Event()
        lost.set()

    def __repr__(self) -> str:
        return f"NATSBroker({redact_url(self.url)!r}, stream={self.stream!r})"

    async def _open(self, role: str) -> NATSClient:
        connected = False
        failures: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            failures.append(exc)
            # Before the first connection, each failed try is reported by the error raised
            # below (once); afterwards, a connection error is news.
            log = logger.warning if connected else logger.debug
            log("NATS %s connection error: %s", role, exc,
                extra={"action": "broker.connection_error", "broker": "nats"})

        async def on_disconnected() -> None:
            logger.info("NATS %s connection is down", role,
                        extra={"action": "broker.disconnected", "broker": "nats"})
            if role == "publisher":
                self._signal_lost()

        async def on_closed() -> None:
            if role == "publisher":
                self._signal_lost()

        try:
            # A bounded first connection, as the other brokers' (one try, then an error the
            # caller retries with its own backoff): with unlimited attempts nats.connect never
            # returns while the server is down, and `sagaz worker --once` hung. Once connected,
            # the client reconnects without limit by itself.
            client: NATSClient = await nats.connect(
                self.url, name=f"sagaz-{role}", error_cb=on_error,
                disconnected_cb=on_disconnected, closed_cb=on_closed, connect_timeout=5,
                max_reconnect_attempts=_FIRST_CONNECT_RETRIES, reconnect_time_wait=0.5)
        except (nats.errors.Error, ConnectionError, OSError, TimeoutError) as exc:
            why = failures[-1] if failures else exc  # "no servers available" says too little
            raise BrokerConnectionError(
                "nats", f"cannot connect to {redact_url(self.url)}: {why}") from exc
        client.options["max_reconnect_attempts"] = -1
        connected = True
        return client

    async def connect(self) -> None:
        await self._jetstream()

    async def _jetstream(self) -> JetStreamContext:
        async with self._lock:
            if self._js is not None and self._nc is not None and not self._nc.is_closed:
                return self._js
            await self._drop_publisher()
            nc = await self._open("publisher")
            try:
                js = nc.jetstream(timeout=self.publish_timeout)
                await self._ensure_stream(js)
            except BaseException:
                await nc.close()
                raise
            self._nc, self._js = nc, js
            logger.info("connected to NATS %s", redact_url(self.url),
                        extra={"action": "broker.connected", "broker": "nats",
                               "stream": self.stream})
            return js

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        try:
            await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(StreamConfig(
                name=self.stream, subjects=[f"{self.subject_prefix}.>"],
                storage=StorageType.FILE, duplicate_window=self.duplicate_window))

    async def _drop_publisher(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            # It is being discarded because it is broken: its errors do not matter.
            with contextlib.suppress(Exception):
                await nc.close()

    def subject(self, event_type: str) -> str:
        if not all(_SUBJECT_TOKEN.fullmatch(t) for t in event_type.split(".")):
            raise ValueError(
                f"event type {event_type!r} cannot be a NATS subject: use no spaces, '*' or '>' "
                "and no empty dot-separated parts")
        return f"{self.subject_prefix}.{event_type}"

    async def publish_batch(self, events: Sequence[OutboxEvent]) -> list[BaseException | None]:
        if not events:
            return []
        js = await self._jetstream()
        lost = self._lost
        outcomes: list[BaseException | None] = [None] * len(events)
        pending: dict[int, asyncio.Future[PubAck]] = {}
        try:
            async with asyncio.timeout(self.publish_timeout):
                for i, event in enumerate(events):
                    try:
                        subject = self.subject(event.event_type)
                    except ValueError as exc:
                        outcomes[i] = exc
                        continue
                    pending[i] = await js.publish_async(
                        subject, event.body(), headers=_nats_headers(event))
                results = await gather_unless_lost(pending.values(), lost)
                if results is None:
                    raise nats.errors.ConnectionClosedError
        except TimeoutError as exc:
            for future in pending.values():
                future.cancel()
            # Acks that do not come within publish_timeout: start over on the next call, and let
            # the relay count the attempt.
            await self._drop_publisher()
            raise BrokerAckTimeout(
                "nats", f"no acknowledgement within {self.publish_timeout:g}s") from exc
        except _PUBLISH_LOST as exc:
            for future in pending.values():
                future.cancel()
            # A closed client does not come back by itself; a reconnecting one may, but its
            # in-flight acks are lost either way: start over on the next call.
            await self._drop_publisher()
            raise BrokerConnectionError(
                "nats", f"connection lost while publishing: {exc!r}") from exc
        for i, result in zip(pending, results, strict=True):
            if isinstance(result, _CONNECTION_ERRORS):
                await self._drop_publisher()
                raise BrokerConnectionError(
                    "nats", f"connection lost while publishing: {result!r}") from result
            if isinstance(result, BaseException):
                outcomes[i] = result
        return outcomes

    async def consume(
        self, consumer_name: str, handler: EventHandler, *, stop: Awaitable[None],
        prefetch: int = 100,
    ) -> None:
        if not _DURABLE_NAME.fullmatch(consumer_name):
            raise ConfigurationError(
                f"consumer name {consumer_name!r} cannot name a JetStream durable consumer: use "
                "letters, digits, '-' and '_'")
        await consume_with_reconnect(
            "nats", consumer_name,
            lambda stopped, backoff: self._consume_once(
                consumer_name, handler, stopped, prefetch, backoff),
            _CONSUMER_LOST, stop=stop, max_delay=self.reconnect_max_delay)

    async def _consume_once(
        self, consumer_name: str, handler: EventHandler, stopped: asyncio.Future[None],
        prefetch: int, backoff: Backoff,
    ) -> None:
        nc = await self._open(f"consumer-{consumer_name}")
        self._consumer_clients.add(nc)
        try:
            js = nc.jetstream()
            await self._ensure_stream(js)
            subscription = await js.pull_subscribe(
                f"{self.subject_prefix}.>", durable=consumer_name, stream=self.stream,
                config=ConsumerConfig(
                    ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                    ack_wait=self.ack_wait, max_ack_pending=max(prefetch, 1000)))
            backoff.reset()
            logger.info("NATS consumer %s started on stream %s", consumer_name, self.stream,
                        extra={"action": "broker.consumer_started", "broker": "nats",
                               "consumer": consumer_name})
            while not stopped.done():
                if nc.is_closed:
                    raise nats.errors.ConnectionClosedError
                try:
                    got, messages = await first_or_stop(
                        subscription.fetch(prefetch, timeout=self.fetch_timeout), stopped)
                except nats.errors.TimeoutError:
                    continue  # nothing new within fetch_timeout
                if not got:
                    return
                for message in messages or []:
                    await self._handle(consumer_name, handler, message)
        finally:
            self._consumer_clients.discard(nc)
            if not nc.is_closed:
                await nc.close()

    async def _handle(self, consumer_name: str, handler: EventHandler, message: Msg) -> None:
        try:
            event = OutboxEvent.from_message(message.data, _envelope_headers(message.headers))
        except (KeyError, ValueError) as exc:
            # It can never be handled: terminate it rather than redeliver it forever.
            log_malformed("nats", consumer_name,
                          f"terminates a malformed message on {message.subject}", exc)
            await message.term()
            return
        if await run_handler("nats", consumer_name, handler, event,
                             again=f" in {self.nak_delay:g}s"):
            await message.ack()
        else:
            await message.nak(delay=self.nak_delay)

    async def close(self) -> None:
        async with self._lock:
            await self._drop_publisher()
        for nc in list(self._consumer_clients):
            if not nc.is_closed:
                await nc.close()

    async def destroy(self, consumer_names: Sequence[str] = ()) -> None:
        """Admin/teardown operation, not part of the ``Broker`` protocol: deletes the JetStream
        stream, so the events it holds and every durable consumer on it (``consumer_names``
        need not be given: the consumers go with the stream). A missing stream is skipped.
        Uses a connection of its own."""
        nc = await self._open("admin")
        try:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await nc.jetstream().delete_stream(self.stream)
        finally:
            await nc.close()


def _nats_headers(event: OutboxEvent) -> dict[str, str]:
    headers = {"Nats-Msg-Id": event.event_id}
    awkward: dict[str, str] = {}
    for key, value in event.message_headers().items():
        if (_HEADER_KEY.fullmatch(key) and not key.lower().startswith("nats-")
                and key.lower() != _ENVELOPE_HEADER.lower()
                and value and value == value.strip() and "\r" not in value and "\n" not in value):
            headers[key] = value
        else:
            awkward[key] = value
    if awkward:
        headers[_ENVELOPE_HEADER] = json.dumps(awkward, separators=(",", ":"))
    return headers


def _envelope_headers(raw: dict[str, str] | None) -> dict[str, str]:
    raw = raw or {}
    headers = {k: v for k, v in raw.items()
               if not k.lower().startswith("nats-") and k != _ENVELOPE_HEADER}
    if _ENVELOPE_HEADER in raw:
        headers.update(json.loads(raw[_ENVELOPE_HEADER]))
    return headers
