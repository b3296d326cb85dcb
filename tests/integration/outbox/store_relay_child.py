"""A relay process on either outbox store: ``store_relay_child.py KIND TARGET BROKER_URL
OPTIONS_JSON`` (KIND: sqlite or postgresql; TARGET: the file or the DSN). Relays until SIGTERM;
the tests SIGKILL it. Short claims, so a killed relay's events are taken over within the test."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from outbox_stores import open_box

from sagaz.outbox.brokers import broker_from_url
from sagaz.outbox.worker import OutboxWorker


async def main(kind: str, target: str, url: str, options: dict[str, object]) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    box = open_box(kind, target)
    broker = broker_from_url(url, **options)
    # Small batches: more claims in flight at any moment, so the kills hit relays holding some.
    worker = OutboxWorker(box.outbox, broker, batch_size=25, claim_seconds=1.0,
                          poll_interval=0.2)
    try:
        await worker.run(stop)
    finally:
        await broker.close()
        await box.outbox.close()
        await box.storage.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])))
