"""Message brokers events are published to, and the one place a broker URL is turned into one.

Every driver is optional (an extra of the package), so broker modules are imported only when a URL
names them: ``import sagaz`` must work with none installed. The small helpers the broker modules
share (URL redaction, reconnect backoff, the stop signal) live here for the same reason: this
module imports no driver.

Every broker class also has ``destroy(consumer_names=())`` (``DestroyableBroker``), an
admin/teardown operation outside the ``Broker`` protocol: it deletes what the broker declared on
the server (exchange and queues, stream, topic) and so the events it holds. For tests, benchmarks
and decommissioning only: the outbox and its consumers never call it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlsplit

from sagaz.errors import ConfigurationError, SagazError
from sagaz.outbox.brokers.base import Broker
from sagaz.redact import redact_url

if TYPE_CHECKING:
    from sagaz.outbox.brokers.base import EventHandler
    from sagaz.outbox.event import OutboxEvent

__all__ = [
    "BROKER_FORMS",
    "BrokerAckTimeout",
    "BrokerConnectionError",
    "Backoff",
    "DestroyableBroker",
    "broker_from_url",
    "redact_url",
]

logger = logging.getLogger(__name__)

BROKER_FORMS = (
    "memory://, amqp://user:pass@host:5672/vhost (or amqps://), redis://host:6379/0 (or "
    "rediss://), nats://host:4222, kafka://host:9092[,host:9092]"
)

T = TypeVar("T")

# How the log messages name each broker (keys: the broker names of log records and errors).
_TITLES = {"rabbitmq": "RabbitMQ", "redis": "Redis", "nats": "NATS", "kafka": "Kafka"}


def _logger(broker: str) -> logging.Logger:
    # The records of the shared helpers keep the logger of the broker's module (named after the
    # broker), as when each module logged them itself: logging configuration can rely on it.
    return logging.getLogger(f"{__name__}.{broker}")


class BrokerConnectionError(SagazError, ConnectionError):
    """The connection to the broker was lost (or could not be opened) during a call.

    Nothing of the call may be assumed done: a ``publish_batch`` that raised this may be retried
    as a whole (consumers deduplicate on ``event_id``). The broker reconnects on the next call.
    The driver's exception is kept as ``__cause__``."""

    def __init__(self, broker: str, message: str):
        super().__init__(f"{broker}: {message}")
        self.broker = broker


class BrokerAckTimeout(BrokerConnectionError):
    """The broker took a batch but did not acknowledge it within the publish timeout.

    To a caller that only retries it is a lost connection (the broker reconnects on the next
    call). The outbox relay counts it as a failed delivery attempt of each event of the batch:
    a broker that never confirms an event must not keep it out of the dead-letter queue forever."""


@runtime_checkable
class DestroyableBroker(Broker, Protocol):
    """A broker with its admin/teardown operation (every broker class here is one)."""

    async def destroy(self, consumer_names: Sequence[str] = ()) -> None:
        """Delete what the broker declared on the server (exchange and the queues of
        ``consumer_names``, stream, topic), and so the events it holds. It uses a connection of
        its own; stop the consumers first."""
        ...


class Backoff:
    """Exponential reconnect delays with full jitter, capped at ``max_delay`` (so a consumer
    never waits longer than that before trying again, however long the broker was away)."""

    def __init__(self, initial: float = 0.1, max_delay: float = 5.0):
        if initial <= 0 or max_delay < initial:
            raise ConfigurationError(
                f"reconnect delays must satisfy 0 < initial <= max_delay, got {initial!r} and "
                f"{max_delay!r}")
        self.initial = initial
        self.max_delay = max_delay
        self.attempt = 0

    def reset(self) -> None:
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.max_delay, self.initial * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        # Jitter keeps a fleet of consumers from reconnecting in lockstep after a broker restart.
        return random.uniform(ceiling / 2, ceiling)


async def first_or_stop(work: Awaitable[T], stop: asyncio.Future[None]) -> tuple[bool, T | None]:
    """Await ``work`` unless ``stop`` completes first (then ``work`` is cancelled).
    Returns ``(True, result)`` or ``(False, None)`` when stopped."""
    task: asyncio.Future[T] = asyncio.ensure_future(work)
    try:
        await asyncio.wait((task, stop), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task.done():
        return True, task.result()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if not stop.done():  # we were cancelled ourselves, not stopped
            raise
    except Exception:  # the work was abandoned: its failure no longer matters
        pass
    return False, None


async def sleep_or_stop(delay: float, stop: asyncio.Future[None]) -> bool:
    """Sleep ``delay`` seconds; False when ``stop`` completed meanwhile."""
    ran, _ = await first_or_stop(asyncio.sleep(delay), stop)
    return ran and not stop.done()


def as_future(stop: Awaitable[None]) -> asyncio.Future[None]:
    """The consumer's stop signal as a future that can be waited on many times."""
    return asyncio.ensure_future(stop)


async def consume_with_reconnect(
    broker: str, consumer_name: str,
    consume_once: Callable[[asyncio.Future[None], Backoff], Awaitable[None]],
    connection_errors: tuple[type[BaseException], ...], *, stop: Awaitable[None],
    max_delay: float,
) -> None:
    """Consume as ``consumer_name`` until ``stop`` completes, over as many connections as it takes.

    ``consume_once(stopped, backoff)`` consumes over one new connection and returns once
    ``stopped`` completed; it resets ``backoff`` when its connection is up. When it raises one of
    ``connection_errors`` (the connection was lost), it runs again after a backoff delay; any
    other exception propagates."""
    stopped = as_future(stop)
    backoff = Backoff(max_delay=max_delay)
    while not stopped.done():
        try:
            await consume_once(stopped, backoff)
        except connection_errors as exc:
            delay = backoff.next_delay()
            _logger(broker).warning(
                "%s consumer %s lost its connection (%s); reconnecting in %.2fs",
                _TITLES[broker], consumer_name, exc, delay,
                extra={"action": "broker.consumer_reconnect", "broker": broker,
                       "consumer": consumer_name, "attempt": backoff.attempt})
            if not await sleep_or_stop(delay, stopped):
                break


async def gather_unless_lost(
    publishes: Iterable[Awaitable[T]], lost: asyncio.Event
) -> list[T | BaseException] | None:
    """The results of ``publishes`` (their exceptions included), or None when ``lost`` is set
    first: the acknowledgements of a closed connection never come, so nobody waits for them."""
    acks = asyncio.gather(*publishes, return_exceptions=True)
    dropped = asyncio.ensure_future(lost.wait())
    try:
        await asyncio.wait((acks, dropped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        dropped.cancel()
    if not acks.done():
        acks.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acks
        return None
    return acks.result()


def log_malformed(broker: str, consumer_name: str, what: str, exc: Exception) -> None:
    """Log a message that can never become an event; ``what`` says what the consumer does with
    it (e.g. "rejects a malformed message <id>")."""
    _logger(broker).error("%s consumer %s %s: %s", _TITLES[broker], consumer_name, what, exc,
                          extra={"action": "broker.malformed_message", "broker": broker,
                                 "consumer": consumer_name})


async def run_handler(
    broker: str, consumer_name: str, handler: EventHandler, event: OutboxEvent, *,
    again: str = "",
) -> bool:
    """Call ``handler`` on ``event``: True when it returned (acknowledge the message), False when
    it raised (logged; the caller leaves the message to be delivered again, ``again`` says when,
    e.g. " in 1s")."""
    try:
        await handler(event)
    except Exception as exc:
        _logger(broker).warning(
            "handler of %s failed for event %s (%s); it will be delivered again%s",
            consumer_name, event.event_id, exc, again,
            extra={"action": "broker.handler_failed", "broker": broker,
                   "consumer": consumer_name, "event_id": event.event_id})
        return False
    return True


def _driver_missing(scheme: str, extra: str, exc: ImportError) -> ConfigurationError:
    return ConfigurationError(
        f"the {scheme}:// broker needs a driver that is not installed ({exc.name or exc}); "
        f"install it with: pip install 'sagaz[{extra}]'")


def broker_from_url(url: str, **options: Any) -> Broker:
    """The broker a URL names; ``options`` go to the broker's constructor.

    Nothing is connected here: the broker connects on ``connect()`` or its first call.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigurationError(
            f"broker URL {redact_url(url)!r} is malformed ({exc}); expected one of: "
            f"{BROKER_FORMS}") from None
    scheme = parts.scheme.lower()
    if scheme == "memory":
        from sagaz.outbox.brokers.memory import InMemoryBroker

        return InMemoryBroker(**options)
    if scheme in ("amqp", "amqps"):
        try:
            from sagaz.outbox.brokers.rabbitmq import RabbitMQBroker
        except ImportError as exc:
            raise _driver_missing(scheme, "rabbitmq", exc) from exc
        return RabbitMQBroker(url, **options)
    if scheme in ("redis", "rediss"):
        try:
            from sagaz.outbox.brokers.redis import RedisStreamsBroker
        except ImportError as exc:
            raise _driver_missing(scheme, "redis", exc) from exc
        return RedisStreamsBroker(url, **options)
    if scheme == "nats":
        try:
            from sagaz.outbox.brokers.nats import NATSBroker
        except ImportError as exc:
            raise _driver_missing(scheme, "nats", exc) from exc
        return NATSBroker(url, **options)
    if scheme == "kafka":
        servers = _kafka_servers(url, parts.netloc)
        try:
            from sagaz.outbox.brokers.kafka import KafkaBroker
        except ImportError as exc:
            raise _driver_missing(scheme, "kafka", exc) from exc
        return KafkaBroker(servers, **options)
    raise ConfigurationError(
        f"broker URL {redact_url(url)!r} has an unsupported or missing scheme; expected one of: "
        f"{BROKER_FORMS}")


def _kafka_servers(url: str, netloc: str) -> str:
    """``kafka://h1:9092,h2:9092`` -> ``h1:9092,h2:9092`` (aiokafka's bootstrap_servers)."""
    hosts = [h.strip() for h in netloc.rpartition("@")[2].split(",")]
    for host in hosts:
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ConfigurationError(
                f"broker URL {redact_url(url)!r}: every Kafka bootstrap server needs host:port, "
                "e.g. kafka://127.0.0.1:9092 or kafka://k1:9092,k2:9092")
    return ",".join(hosts)
