"""The outbox under chaos, against the real brokers: 10,000 events relayed by 4 worker processes
while workers are SIGKILLed 5 times and the broker connections are cut twice. Every event
reaches the consumer behind the inbox, its side effect happens exactly once, nothing is left
unsent."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from broker_services import require_broker
from tcp_proxy import TcpProxy

from sagaz.outbox.brokers import DestroyableBroker, broker_from_url
from sagaz.outbox.event import OutboxEvent
from sagaz.outbox.inbox import ConsumerInbox, consume
from sagaz.storage.postgresql import PostgreSQLSagaStorage
from sagaz.storage.postgresql.outbox import PostgreSQLOutbox

EVENTS = 10_000
WORKERS = 4
KILLS = 5
CUTS = 2
DEADLINE = 150.0
CHILD = Path(__file__).with_name("relay_child.py")

pytestmark = pytest.mark.slow


def _url(kind: str, port: int) -> str:
    if kind == "redis":
        return f"redis://127.0.0.1:{port}/0"
    if kind == "rabbitmq":
        return f"amqp://guest:guest@127.0.0.1:{port}/"
    return f"nats://127.0.0.1:{port}"


def _broker(kind: str, port: int) -> tuple[str, dict[str, Any]]:
    """URL (through the proxy port) and options with names of this run only."""
    run = uuid.uuid4().hex[:8]
    if kind == "redis":
        return _url(kind, port), {"stream": f"chaos.{run}", "claim_idle": 2.0}
    if kind == "rabbitmq":
        # The consumer's queue is declared with the exchange: nothing published before the
        # consumer starts is dropped.
        return _url(kind, port), {"exchange": f"chaos.{run}", "queues": [f"chaos-{kind}"],
                                  "redelivery_delay": 0.2}
    return _url(kind, port), {"stream": f"CHAOS_{run}", "subject_prefix": f"chaos.{run}",
                              "ack_wait": 5.0}


TARGETS = {"redis": 6379, "rabbitmq": 5672, "nats": 4222}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["redis", "rabbitmq", "nats"])
async def test_killed_workers_and_cut_connections_lose_and_duplicate_nothing(
    kind: str, pg_dsn: str,
) -> None:
    require_broker(kind, TARGETS[kind])
    with TcpProxy("127.0.0.1", TARGETS[kind]) as proxy:
        url, options = _broker(kind, proxy.port)
        try:
            await _run_chaos(kind, pg_dsn, url, options, proxy)
        finally:
            await _remove(kind, options)


async def _remove(kind: str, options: dict[str, Any]) -> None:
    """Delete what the run left on the broker (10,000 messages each time otherwise), connected
    to the broker itself: the proxy may be gone or cut by now."""
    broker = broker_from_url(_url(kind, TARGETS[kind]), **options)
    assert isinstance(broker, DestroyableBroker)
    await broker.destroy(options.get("queues", ()))


async def _run_chaos(
    kind: str, dsn: str, url: str, options: dict[str, Any], proxy: TcpProxy
) -> None:
    storage = PostgreSQLSagaStorage(dsn)
    outbox = PostgreSQLOutbox(storage)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE effects (event_id uuid NOT NULL)")
    keys = [f"order-{i}" for i in range(200)]
    for start in range(0, EVENTS, 1000):
        await outbox.publish([OutboxEvent("Charged", {"n": n}, key=random.choice(keys))
                              for n in range(start, start + 1000)])

    # The consumer connects through the proxy too: its connection is cut with the others.
    consumer_broker = broker_from_url(url, **options)
    await consumer_broker.connect()  # declares the stream/exchange before anything is relayed
    inbox = ConsumerInbox(storage, f"chaos-{kind}")

    async def apply(event: OutboxEvent, connection: Any) -> None:
        await connection.execute("INSERT INTO effects VALUES (%s)", (event.event_id,))

    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    consumer = asyncio.create_task(
        consume(consumer_broker, f"chaos-{kind}", apply, stop=stop, inbox=inbox))
    await asyncio.sleep(0.5)  # the durable consumer exists before the first publish

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, str(CHILD), dsn, url, json.dumps(options)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    children = [spawn() for _ in range(WORKERS)]
    kills = cuts = 0
    started = time.monotonic()
    try:
        while inbox.processed < EVENTS:
            elapsed = time.monotonic() - started
            assert elapsed < DEADLINE, (
                f"{inbox.processed}/{EVENTS} processed after {DEADLINE}s "
                f"(outbox: {await outbox.counts()})")
            if kills < KILLS and elapsed > 0.6 * (kills + 1):
                victim = random.randrange(WORKERS)
                children[victim].kill()
                children[victim].wait()
                children[victim] = spawn()
                kills += 1
            elif cuts < CUTS and elapsed > 1.5 * (cuts + 1):
                proxy.cut()
                cuts += 1
            await asyncio.sleep(0.1)
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(30)
        stop.set_result(None)
        await consumer
        await consumer_broker.close()

    assert (kills, cuts) == (KILLS, CUTS), "the run ended before all the chaos happened"
    with psycopg.connect(dsn) as conn:
        effects = conn.execute("SELECT count(*), count(DISTINCT event_id) FROM effects").fetchone()
    assert effects == (EVENTS, EVENTS)
    counts = await outbox.counts()
    await storage.close()
    assert counts == {"SENT": EVENTS}, counts
    print(f"\n[chaos {kind}] {EVENTS} events, {inbox.duplicates} duplicate deliveries dropped "
          f"by the inbox, {time.monotonic() - started:.1f}s")
