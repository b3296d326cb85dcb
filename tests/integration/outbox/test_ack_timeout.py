"""A broker that takes events and never confirms them (a real broker behind a stalled proxy):
each timeout counts a failed delivery attempt, so the events end in DEAD_LETTER after
max_attempts instead of being retried forever. (A lost connection counts nothing: test_relay_kills
and the worker's --once tests with the broker down.)"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from broker_services import require_broker
from tcp_proxy import TcpProxy

from sagaz.outbox.brokers import BrokerAckTimeout, broker_from_url
from sagaz.outbox.event import OutboxEvent
from sagaz.outbox.worker import OutboxWorker
from sagaz.storage.sqlite import SQLiteSagaStorage

BROKERS = {"rabbitmq": ("amqp://guest:guest@127.0.0.1:{port}/", 5672),
           "nats": ("nats://127.0.0.1:{port}", 4222)}


def _options(kind: str) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    if kind == "rabbitmq":
        return {"exchange": f"ack-timeout.{run}"}
    return {"stream": f"ACK_TIMEOUT_{run}", "subject_prefix": f"ack-timeout.{run}"}


async def _rows(storage: SQLiteSagaStorage) -> list[tuple[str, int]]:
    return await storage._run(lambda conn: conn.execute(
        "SELECT status, attempts FROM saga_outbox ORDER BY created_at").fetchall())


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(BROKERS))
async def test_unconfirmed_events_count_attempts_and_reach_the_dead_letters(
    kind: str, tmp_path: Path
) -> None:
    template, port = BROKERS[kind]
    require_broker(kind, port)
    storage = SQLiteSagaStorage(tmp_path / "sagaz.db")
    with TcpProxy("127.0.0.1", port) as proxy:
        broker = broker_from_url(template.format(port=proxy.port), publish_timeout=1.0,
                                 **_options(kind))
        store = storage.outbox_store()
        worker = OutboxWorker(store, broker, max_attempts=2, base_backoff=0.01,
                              max_backoff=0.01)
        try:
            await broker.connect()
            await store.publish([OutboxEvent("order.created", {"n": n}) for n in range(3)])
            proxy.stall()
            assert await worker.relay_once() == 3
            assert await _rows(storage) == [("FAILED", 1)] * 3
            # The broker client starts over after a timeout: let it connect, then stall again.
            proxy.resume()
            await broker.connect()
            proxy.stall()
            await asyncio.sleep(0.05)  # the per-event backoff (10 ms)
            assert await worker.relay_once() == 3
            rows = await _rows(storage)
            assert rows == [("DEAD_LETTER", 2)] * 3, rows
            assert worker.dead_lettered == 3
        finally:
            proxy.resume()
            await broker.close()
            await storage.close()


def test_an_ack_timeout_is_a_connection_error_to_plain_callers() -> None:
    assert issubclass(BrokerAckTimeout, ConnectionError)
