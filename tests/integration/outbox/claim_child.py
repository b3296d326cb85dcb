"""A claiming process for the contract: ``claim_child.py KIND TARGET WORKER`` claims batches of
the outbox (long claims, never marked) until a claim comes back empty, then prints the ids it
claimed as JSON. Several at once on one database must never claim one event twice."""

from __future__ import annotations

import asyncio
import json
import sys

from outbox_stores import open_box


async def main(kind: str, target: str, worker: str) -> None:
    box = open_box(kind, target)
    claimed: list[str] = []
    try:
        while batch := await box.outbox.claim(worker, 25, 600):
            claimed += [c.event.event_id for c in batch]
    finally:
        await box.outbox.close()
        await box.storage.close()
    print(json.dumps(claimed))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
