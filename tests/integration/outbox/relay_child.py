"""A relay worker process for the chaos test: ``relay_child.py DSN BROKER_URL OPTIONS_JSON``.
Relays until SIGTERM; the test also SIGKILLs it."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from sagaz.outbox.brokers import broker_from_url
from sagaz.outbox.worker import OutboxWorker
from sagaz.storage.postgresql import PostgreSQLSagaStorage
from sagaz.storage.postgresql.outbox import PostgreSQLOutbox


async def main(dsn: str, url: str, options: dict[str, object]) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    storage = PostgreSQLSagaStorage(dsn, auto_migrate=False)
    outbox = PostgreSQLOutbox(storage, listen_dsn=dsn)
    broker = broker_from_url(url, **options)
    # Short claims: the events a killed worker held are published again within the test's time.
    worker = OutboxWorker(outbox, broker, batch_size=200, claim_seconds=2.0, poll_interval=0.2)
    try:
        await worker.run(stop)
    finally:
        await broker.close()
        await outbox.close()
        await storage.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
