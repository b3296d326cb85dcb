"""Child process of the SQLite storage tests: several of these act on one file at the same moment.

usage:
  storage_child.py open  DB BARRIER              open the file (migrating it), create one saga
  storage_child.py claim DB BARRIER OWNER        claim expired sagas, 2 at a time, until none left
  storage_child.py start DB BARRIER EFFECTS KEY  run the saga below with idempotency_key KEY

Each child announces itself in the BARRIER directory (``ready-<pid>``) and starts its work only
once the file ``go`` appears there, so that all children start together. The result is printed
to stdout as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import sagaz
from sagaz import Saga, SagaConfig, SagaContext, SagaStatus
from sagaz.engine.types import SagaState
from sagaz.storage.sqlite import SQLiteSagaStorage


def wait_for_go(barrier: Path) -> None:
    (barrier / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + 10
    while not (barrier / "go").exists():
        if time.monotonic() > deadline:
            raise SystemExit("no go signal within 10 s")
        time.sleep(0.001)


async def open_and_create(db: str) -> dict[str, Any]:
    storage = SQLiteSagaStorage(db)
    state = SagaState(str(uuid.uuid4()), "opener", SagaStatus.RUNNING, {"pid": os.getpid()},
                      lease_owner=f"opener-{os.getpid()}")
    _, created = await storage.create(state, 30)
    await storage.close()
    return {"created": created}


async def claim_all(db: str, owner: str) -> list[str]:
    storage = SQLiteSagaStorage(db)
    claimed: list[str] = []
    while batch := await storage.claim_expired(owner, 30, 2):
        claimed.extend(batch)
    await storage.close()
    return claimed


def _step(name: str, effects: str) -> Any:
    def run(ctx: SagaContext) -> dict[str, Any]:
        with open(effects, "a") as out:
            out.write(f"action {name} {os.getpid()}\n")
        # Long enough that the other starters arrive while this saga is still running.
        time.sleep(0.02)
        return {f"{name}_by": os.getpid()}

    return run


async def start(db: str, effects: str, key: str) -> dict[str, Any]:
    storage = SQLiteSagaStorage(db)
    sagaz.configure(SagaConfig(storage=storage, lease_seconds=5))
    saga = Saga(name="idempotent-start")
    for name in ("a", "b", "c"):
        saga.add_step(name, _step(name, effects))
    context = await saga.run({"order": key}, idempotency_key=key)
    await storage.close()
    return context


async def main(argv: list[str]) -> Any:
    command, db, barrier, *rest = argv
    wait_for_go(Path(barrier))
    if command == "open":
        return await open_and_create(db)
    if command == "claim":
        return await claim_all(db, rest[0])
    if command == "start":
        return await start(db, rest[0], rest[1])
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1:])), sort_keys=True), flush=True)
