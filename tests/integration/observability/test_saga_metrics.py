"""The saga, write-path and outbox-backlog metrics, scraped over HTTP from a live endpoint while
real sagas run on SQLite and on PostgreSQL: every figure is checked against what the sagas did
(started, retried, compensated, recovered, held running), and no label carries a saga id."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from metrics_scrape import Scrape, probe, scrape

from sagaz import RetryPolicy, Saga, SagaConfig, SagaFailedError, SagaStatus, recover
from sagaz.engine.types import SagaState
from sagaz.observability.endpoint import serve_metrics
from sagaz.observability.metrics import Metrics
from sagaz.storage.base import SagaStorage
from sagaz.storage.postgresql import PostgreSQLSagaStorage
from sagaz.storage.sqlite import SQLiteSagaStorage

NAME = "metrics-order"
ORPHAN = "1c0ffee0-0000-4000-8000-00000000beef"


@pytest.fixture(params=["sqlite", "postgresql"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SagaStorage]:
    made: SQLiteSagaStorage | PostgreSQLSagaStorage
    if request.param == "sqlite":
        made = SQLiteSagaStorage(tmp_path / "metrics.db")
    else:
        made = PostgreSQLSagaStorage(request.getfixturevalue("pg_dsn"))
    yield made
    await made.close()


def _saga(config: SagaConfig, held: asyncio.Event, holding: asyncio.Event) -> Saga:
    tries: dict[str, int] = {}

    async def reserve(ctx: Any) -> None:
        ctx.emit("Reserved", {"order": ctx["order"]}, key=ctx["order"])

    async def charge(ctx: Any) -> None:
        tries[ctx["order"]] = tries.get(ctx["order"], 0) + 1
        if tries[ctx["order"]] == 1:
            raise ConnectionError("card processor busy")  # retried once

    async def ship(ctx: Any) -> None:
        if ctx.get("hold"):
            holding.set()
            await held.wait()
        if ctx.get("fail"):
            raise RuntimeError("no courier")

    async def undo(ctx: Any) -> None:
        return None

    quick = RetryPolicy(base_delay=0.001, max_delay=0.001)
    return (Saga(name=NAME, config=config)
            .add_step("reserve", reserve, undo)
            .add_step("charge", charge, undo, max_retries=1, retry_policy=quick)
            .add_step("ship", ship))


def _dead_letter_one(storage: SagaStorage) -> None:
    """Move one outbox event to DEAD_LETTER behind the storage's back, as a relay would."""
    sql = ("UPDATE saga_outbox SET status = 'DEAD_LETTER' WHERE event_id = "
           "(SELECT event_id FROM saga_outbox ORDER BY created_at LIMIT 1)")
    if isinstance(storage, SQLiteSagaStorage):
        with sqlite3.connect(str(storage.path)) as conn:
            conn.execute(sql)
    else:
        assert isinstance(storage, PostgreSQLSagaStorage)
        with psycopg.connect(storage.dsn, autocommit=True) as conn:
            conn.execute(sql)


async def _scrape(url: str) -> Scrape:
    # From a thread: the outbox gauges are read by coroutines of this very loop.
    return await asyncio.to_thread(scrape, url)


@pytest.mark.timeout(90)
async def test_saga_and_storage_metrics_scraped_live(storage: SagaStorage) -> None:
    config = SagaConfig(storage=storage, lease_seconds=0.2)
    metrics = Metrics()
    metrics.instrument(config)
    server = serve_metrics(port=0, metrics=metrics, config=config)
    try:
        held, holding = asyncio.Event(), asyncio.Event()
        saga = _saga(config, held, holding)
        await asyncio.gather(*(saga.run({"order": f"A{i}"}) for i in range(3)))
        with pytest.raises(SagaFailedError):
            await saga.run({"order": "F1", "fail": True})
        running = asyncio.create_task(saga.run({"order": "H1", "hold": True}))
        await asyncio.wait_for(holding.wait(), 10)
        during = await _scrape(server.url)
        held.set()
        await running

        # An orphan (its executor died): recovery with this config takes it over.
        await storage.create(SagaState(ORPHAN, NAME, SagaStatus.RUNNING, {"order": "R1"},
                                       lease_owner="dead-process"), 0.01)
        await asyncio.sleep(0.05)
        report = await recover(config)
        assert report.finished == {ORPHAN: SagaStatus.COMPENSATED}
        # Each saga of the run wrote 2 events (Reserved and its final lifecycle event); the
        # orphan its SagaCompensated. Nothing relays them: all pending.
        before = await _scrape(server.url)
        _dead_letter_one(storage)
        after = await _scrape(server.url)
    finally:
        server.stop()

    assert during.value("sagaz_sagas_running") == 1
    assert after.value("sagaz_sagas_running") == 0
    assert after.types["sagaz_saga"] == "counter"
    assert after.value("sagaz_saga_total", saga=NAME, status="COMPLETED") == 4
    # The failed one and the orphan.
    assert after.value("sagaz_saga_total", saga=NAME, status="COMPENSATED") == 2
    assert after.types["sagaz_saga_duration_seconds"] == "histogram"
    assert after.value("sagaz_saga_duration_seconds_count", saga=NAME) == 6
    assert after.value("sagaz_saga_duration_seconds_sum", saga=NAME) > 0
    for step, completed in (("reserve", 5), ("charge", 5), ("ship", 4)):
        assert after.value("sagaz_step_duration_seconds_count", saga=NAME,
                           step=step) == completed
    # Every run's charge failed once and was retried.
    assert after.value("sagaz_step_retries_total", saga=NAME, step="charge") == 5
    assert after.get("sagaz_step_retries_total", saga=NAME, step="ship") is None
    # The failed saga compensated charge and reserve; the orphan reserve, the step that "may
    # have happened" when its executor died.
    assert after.value("sagaz_compensations_total", saga=NAME, step="charge") == 1
    assert after.value("sagaz_compensations_total", saga=NAME, step="reserve") == 2
    assert after.value("sagaz_recovered_sagas_total") == 1

    batches = after.value("sagaz_storage_batch_size_count")
    writes = after.value("sagaz_storage_batch_size_sum")
    assert batches >= 1 and writes >= batches
    # 6 creates and at least one commit per step completed, compensated or final status.
    assert writes >= 6 + 14
    assert after.value("sagaz_storage_commit_seconds_count") == batches
    assert after.value("sagaz_storage_commit_seconds_sum") > 0

    assert before.value("sagaz_outbox_pending_events") == 11
    assert before.value("sagaz_outbox_dead_letter_events") == 0
    assert after.value("sagaz_outbox_pending_events") == 10
    assert after.value("sagaz_outbox_dead_letter_events") == 1
    assert after.value("sagaz_scrape_error", component="outbox") == 0

    # Bounded cardinality: no saga id, no order, in any label.
    values = after.label_values()
    assert ORPHAN not in values and not any(v.startswith(("A", "F1", "H1")) for v in values)


async def test_health_and_readiness_probes(tmp_path: Path) -> None:
    storage = SQLiteSagaStorage(tmp_path / "probe.db")
    config = SagaConfig(storage=storage)
    server = serve_metrics(port=0, config=config)
    try:
        assert await asyncio.to_thread(probe, server.url, "/healthz") == (200, "ok\n")
        assert await asyncio.to_thread(probe, server.url, "/readyz") == (200, "ok\n")
        status, body = await asyncio.to_thread(probe, server.url, "/nothing")
        assert status == 404 and "/metrics" in body
    finally:
        server.stop()
        await storage.close()


async def test_readyz_says_503_while_the_storage_does_not_answer() -> None:
    # A server that refuses connections (nothing listens on port 1): not ready, within 2 s.
    storage = PostgreSQLSagaStorage("host=127.0.0.1 port=1 dbname=x user=x connect_timeout=2",
                                    retry_timeout=0)
    server = serve_metrics(port=0, config=SagaConfig(storage=storage))
    try:
        status, body = await asyncio.to_thread(probe, server.url, "/readyz")
        assert status == 503 and "storage" in body
        assert (await asyncio.to_thread(probe, server.url, "/healthz"))[0] == 200
        failed = await _scrape(server.url)
        assert failed.value("sagaz_scrape_error", component="outbox") == 1
        assert failed.seconds < 10
    finally:
        server.stop()
        await storage.close()
