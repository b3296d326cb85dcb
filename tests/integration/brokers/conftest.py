"""Fixtures for the broker tests: the real RabbitMQ, Redis and NATS on loopback.

Each test gets its own exchange / stream / subjects (unique names), removed afterwards, so tests
never see each other's messages. A service that cannot be reached FAILS the test under CI=true
(with how to start it); elsewhere the test is skipped with the same message.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from broker_contract import CONSUMERS, BrokerKit

from sagaz.outbox.brokers.base import Broker

RABBITMQ_URL = os.environ.get("SAGAZ_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("SAGAZ_TEST_REDIS", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("SAGAZ_TEST_NATS", "nats://127.0.0.1:4222")

HOW_TO_START = {
    "rabbitmq": "start it with `service rabbitmq-server start` (or "
                "`docker run -p 5672:5672 rabbitmq:3`), or point SAGAZ_TEST_RABBITMQ at one",
    "redis": "start it with `service redis-server start` (or `redis-server --daemonize yes`), "
             "or point SAGAZ_TEST_REDIS at one",
    "nats": "start it with `nats-server -js -a 127.0.0.1 -p 4222 &`, "
            "or point SAGAZ_TEST_NATS at one",
}


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_service(name: str, url: str, default_port: int) -> None:
    """Fail (CI) or skip (elsewhere) unless ``url``'s host:port accepts TCP connections."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        message = f"{name} is not reachable at {host}:{port} ({exc}); {HOW_TO_START[name]}"
        if _in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:12]


class _Made:
    """Brokers a kit made during one test: all closed at teardown."""

    def __init__(self) -> None:
        self.brokers: list[Broker] = []

    def track(self, factory: Callable[[], Any]) -> Callable[[], Any]:
        def make() -> Any:
            broker = factory()
            self.brokers.append(broker)
            return broker
        return make

    async def close(self) -> None:
        for broker in self.brokers:
            await broker.close()


@pytest.fixture
async def memory_kit() -> AsyncIterator[BrokerKit]:
    from sagaz.outbox.brokers.memory import InMemoryBroker

    shared = InMemoryBroker()  # in-process: publisher and consumers must share the object
    yield BrokerKit("memory", lambda: shared, None)
    await shared.close()
    await shared.destroy()


@pytest.fixture
async def rabbitmq_kit(unique: str) -> AsyncIterator[BrokerKit]:
    require_service("rabbitmq", RABBITMQ_URL, 5672)
    from sagaz.outbox.brokers.rabbitmq import RabbitMQBroker

    exchange = f"sagaz.test.{unique}"
    made = _Made()

    async def break_connections(broker: Any) -> None:
        if broker._connection is not None:
            await broker._connection.close()
        for connection in list(broker._consumer_connections):
            await connection.close()

    yield BrokerKit("rabbitmq", made.track(lambda: RabbitMQBroker(
        RABBITMQ_URL, exchange, queues=CONSUMERS, redelivery_delay=0.1,
        reconnect_max_delay=0.5)), break_connections)
    await made.close()
    await RabbitMQBroker(RABBITMQ_URL, exchange).destroy(CONSUMERS)


@pytest.fixture
async def redis_kit(unique: str) -> AsyncIterator[BrokerKit]:
    require_service("redis", REDIS_URL, 6379)
    import redis.asyncio as aioredis

    from sagaz.outbox.brokers.redis import RedisStreamsBroker

    stream, client_name = f"sagaz:test:{unique}", f"sagaz-test-{unique}"
    admin = aioredis.from_url(REDIS_URL)
    made = _Made()

    async def break_connections(broker: Any) -> None:
        # Only this test's connections (by client name): other users of this Redis keep theirs.
        for client in await admin.client_list():
            if client.get("name") == client_name:
                await admin.client_kill_filter(_id=client["id"])

    yield BrokerKit("redis", made.track(lambda: RedisStreamsBroker(
        REDIS_URL, stream, claim_idle=0.3, client_name=client_name, reconnect_max_delay=0.5)),
        break_connections)
    await made.close()
    await admin.aclose()
    await RedisStreamsBroker(REDIS_URL, stream).destroy()


@pytest.fixture
async def nats_kit(unique: str) -> AsyncIterator[BrokerKit]:
    require_service("nats", NATS_URL, 4222)
    from sagaz.outbox.brokers.nats import NATSBroker

    stream, prefix = f"SAGAZ_TEST_{unique}", f"sagaz.test.{unique}"
    made = _Made()

    async def break_connections(broker: Any) -> None:
        if broker._nc is not None:
            await broker._nc.close()
        for client in list(broker._consumer_clients):
            await client.close()

    yield BrokerKit("nats", made.track(lambda: NATSBroker(
        NATS_URL, stream, prefix, nak_delay=0.1, ack_wait=5, fetch_timeout=0.3,
        reconnect_max_delay=0.5)), break_connections)
    await made.close()
    await NATSBroker(NATS_URL, stream, prefix).destroy()


@pytest.fixture(params=["memory", "rabbitmq", "redis", "nats"])
def kit(request: pytest.FixtureRequest) -> BrokerKit:
    """Every broker that runs here (Kafka has its own module: no Kafka on these machines)."""
    result: BrokerKit = request.getfixturevalue(f"{request.param}_kit")
    return result


@pytest.fixture(params=["rabbitmq", "redis", "nats"])
def networked_kit(request: pytest.FixtureRequest) -> BrokerKit:
    """The brokers with a connection that can be lost."""
    result: BrokerKit = request.getfixturevalue(f"{request.param}_kit")
    return result
