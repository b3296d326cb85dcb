"""Relay crashes cost no attempt: relay processes SIGKILLed again and again while they hold
claims, on both outbox stores, against the real Redis. Events a killed relay held are taken over
when its claim expires and published, and every event ends SENT with ``attempts`` 0: the broker
never refused one, so nothing may count toward ``max_attempts`` (before, every claim counted, and
crashes alone could dead-letter an event)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from broker_services import require_broker
from outbox_stores import KINDS, open_box, sqlite_target

from sagaz.outbox.brokers import DestroyableBroker, broker_from_url
from sagaz.outbox.event import OutboxEvent

EVENTS = 20_000
RELAYS = 3
KILLS = 8
DEADLINE = 90.0
REDIS_URL = os.environ.get("SAGAZ_TEST_REDIS", "redis://127.0.0.1:6379/0")
CHILD = Path(__file__).with_name("store_relay_child.py")

pytestmark = pytest.mark.slow


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", KINDS)
async def test_killed_relays_count_no_attempt(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    require_broker("Redis", 6379)
    target = sqlite_target(tmp_path) if kind == "sqlite" else request.getfixturevalue("pg_dsn")
    box = open_box(kind, target)
    options = {"stream": f"kills.{uuid.uuid4().hex[:8]}"}
    keys = [f"order-{i}" for i in range(1000)]
    for start in range(0, EVENTS, 2000):
        await box.publish([OutboxEvent("Charged", {"n": n}, key=random.choice(keys))
                           for n in range(start, start + 2000)])

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, str(CHILD), kind, target, REDIS_URL, json.dumps(options)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    relays = [spawn() for _ in range(RELAYS)]
    kills = taken_over = 0
    started = time.monotonic()
    try:
        while (await box.outbox.counts()).get("SENT", 0) < EVENTS:
            elapsed = time.monotonic() - started
            assert elapsed < DEADLINE, f"after {DEADLINE}s: {await box.outbox.counts()}"
            if kills < KILLS:
                victim = random.randrange(RELAYS)
                held = box.held_by(f"-{relays[victim].pid}-")
                if held:  # kill it while it holds claims: those must be taken over
                    relays[victim].kill()
                    relays[victim].wait()
                    taken_over += held
                    kills += 1
                    relays[victim] = spawn()
            await asyncio.sleep(0.1)
    finally:
        for relay in relays:
            relay.terminate()
        for relay in relays:
            relay.wait(30)
        broker = broker_from_url(REDIS_URL, **options)
        assert isinstance(broker, DestroyableBroker)
        await broker.destroy()
        await box.outbox.close()
        await box.storage.close()

    assert kills == KILLS and taken_over > 0, (kills, taken_over)
    rows = box.rows()
    assert {r.status for r in rows} == {"SENT"} and len(rows) == EVENTS
    counted = [r.attempts for r in rows if r.attempts]
    assert not counted, (f"{len(counted)} events count attempts {sorted(set(counted))} although "
                         "the broker refused none")
    print(f"\n[relay kills {kind}] {kills} kills while holding {taken_over} claims, "
          f"{time.monotonic() - started:.1f}s")
