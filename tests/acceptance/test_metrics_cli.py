"""``sagaz worker --metrics-port`` and ``sagaz metrics serve`` as subprocesses: the worker's
endpoint shows the saga it recovered and the events it relayed, its probes answer, SIGTERM
stops it; bad options are one-line usage errors (exit 2)."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from metrics_scrape import probe, scrape, wait_for
from process_output import stdout_lines
from test_db_cli import _env, assert_clean_error, cli

from sagaz import SagaStatus
from sagaz.engine.types import SagaState
from sagaz.storage.sqlite import SQLiteSagaStorage

SAGA_MODULE = '''
from sagaz import Saga, register

async def reserve(ctx):
    ctx.emit("OrderReserved", {"order": ctx["order"]}, key=ctx["order"])

async def release(ctx):
    return None

order = Saga(name="metrics-cli-order")
order.add_step("reserve", reserve, release)
register(order)  # recovery finds it by name
'''
ORPHAN = "7e57ab1e-0000-4000-8000-0000000000aa"


def _orphan(db: Path) -> None:
    """A RUNNING saga whose executor died: its lease has expired already."""

    async def make() -> None:
        storage = SQLiteSagaStorage(db)
        try:
            await storage.create(SagaState(ORPHAN, "metrics-cli-order", SagaStatus.RUNNING,
                                           {"order": "Z9"}, lease_owner="dead-process"), 0.01)
        finally:
            await storage.close()

    asyncio.run(make())


@pytest.mark.timeout(90)
def test_the_worker_serves_its_metrics_and_probes(tmp_path: Path) -> None:
    (tmp_path / "shop.py").write_text(SAGA_MODULE)
    _orphan(tmp_path / "sagaz.db")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sagaz", "worker", "--import", "shop", "--interval", "0.2",
         "--metrics-port", "0"], cwd=tmp_path,
        env=_env(SAGAZ_BROKER_URL="memory://", PYTHONPATH=str(tmp_path)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = stdout_lines(proc)
    try:
        first = lines.get(timeout=30)
        assert "metrics on http://127.0.0.1:" in first, first
        url = first.split("metrics on ")[1].split("/metrics")[0]
        # The orphan is compensated (its reserve may have happened): SagaCompensated is sent.
        wait_for(lambda: scrape(url).get("sagaz_outbox_published_total", broker="memory") == 1,
                 30, "the worker relayed the orphan's SagaCompensated")
        found = scrape(url)
        assert found.value("sagaz_recovered_sagas_total") == 1
        assert found.value("sagaz_saga_total", saga="metrics-cli-order",
                           status="COMPENSATED") == 1
        assert found.value("sagaz_compensations_total", saga="metrics-cli-order",
                           step="reserve") == 1
        assert found.value("sagaz_storage_batch_size_count") >= 1
        assert found.value("sagaz_outbox_pending_events") == 0
        assert found.value("sagaz_outbox_failed_total", broker="memory") == 0
        assert probe(url, "/healthz") == (200, "ok\n")
        assert probe(url, "/readyz") == (200, "ok\n")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    assert "Traceback" not in proc.stderr.read()


def test_a_port_in_use_is_a_usage_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        assert_clean_error(cli(tmp_path, "worker", "--metrics-port", port), 2, port,
                           "--metrics-port")
        assert_clean_error(cli(tmp_path, "metrics", "serve", "--port", port), 2, port)


def test_metrics_serve_refuses_bad_targets(tmp_path: Path) -> None:
    assert_clean_error(cli(tmp_path, "metrics", "serve", "--cluster", str(tmp_path)), 2,
                       "cluster.json", "sagaz dev up")
    assert_clean_error(cli(tmp_path, "metrics", "serve", "--node", "no-url"), 2, "NAME=URL")
    assert_clean_error(cli(tmp_path, "metrics", "serve", "--cluster", str(tmp_path),
                           "--node", "a=postgresql://x@h/db"), 2, "--cluster")
    help_text = cli(tmp_path, "metrics", "serve", "--help").stdout
    for variable in ("SAGAZ_METRICS_PORT", "SAGAZ_METRICS_HOST", "SAGAZ_METRICS_CLUSTER"):
        assert variable in help_text
