"""`sagaz sagas signal` as users run it: a saga parked in a SQLite file by one process, the
signal sent by the CLI in another, the saga resumed by `sagaz worker --once` in a third."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from test_cli import HERE, assert_clean_error, cli, saga_json

import sagaz
from sagaz import SagaConfig, SagaStatus
from sagaz.storage.sqlite import SQLiteSagaStorage

sys.path.insert(0, str(HERE))
import waiting_sagas


async def _park(path: Path) -> str:
    """Start the saga, let it park, then drop the process's interest in it."""
    storage = SQLiteSagaStorage(path)
    try:
        saga = waiting_sagas.approval
        saga.config = SagaConfig(storage=storage)
        handle = await saga.start({"address": "Rua Augusta 1"})
        for _ in range(400):
            if await handle.status() is SagaStatus.WAITING:
                break
            await asyncio.sleep(0.005)
        return handle.saga_id
    finally:
        saga.config = None
        await storage.close()


def test_signal_then_worker_resumes_the_saga(tmp_path: Path) -> None:
    saga_id = asyncio.run(_park(tmp_path / "sagaz.db"))
    assert saga_json(tmp_path, saga_id)["status"] == "WAITING"
    sent = cli(tmp_path, "sagas", "signal", saga_id, "OrderApproved",
               "--payload", '{"approved_by": "ana"}', "--signal-id", "webhook-1")
    assert sent.returncode == 0, sent.stderr
    assert "sent to saga" in sent.stdout
    again = cli(tmp_path, "sagas", "signal", saga_id, "OrderApproved",
                SAGAZ_SIGNAL_ID="webhook-1")
    assert again.returncode == 0 and "already sent" in again.stdout, again.stderr
    worker = cli(tmp_path, "worker", "--once", "--import", "waiting_sagas")
    assert worker.returncode == 0, worker.stderr
    assert "resumed 1 waiting saga" in worker.stdout
    done = saga_json(tmp_path, saga_id)
    assert done["status"] == "COMPLETED"
    assert done["context"] == {"address": "Rua Augusta 1", "reserved": True,
                               "approved_by": "ana", "shipped_to": "Rua Augusta 1"}
    assert_clean_error(cli(tmp_path, "sagas", "signal", saga_id, "OrderApproved"), 1,
                       "COMPLETED", "takes no more signals")


def test_bad_signal_input_is_a_usage_error(tmp_path: Path) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"
    assert_clean_error(cli(tmp_path, "sagas", "signal", unknown, "Go", "--payload", "[1"), 2,
                       "not valid JSON")
    assert_clean_error(cli(tmp_path, "sagas", "signal", unknown, "Go", "--payload", "[1]"), 2,
                       "must be a JSON object")
    assert_clean_error(cli(tmp_path, "sagas", "signal", "nope", "Go"), 2, "UUID")
    assert_clean_error(cli(tmp_path, "sagas", "signal", unknown, "Go"), 1, "no saga with id")
    assert os.listdir(tmp_path)  # the default database was created there, not elsewhere
    assert sagaz.SagaStatus.WAITING.value == "WAITING"
