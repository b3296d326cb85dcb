"""Maintenance that catches up while sagas run: the current partitions are missing (maintenance
lagged), so every new saga, step, event and audit row lands in DEFAULT; then maintenance creates
the partitions and moves those rows out, under a steady saga load. Nothing may fail: no insert
may hit DEFAULT's new partition constraint, no fenced update may miss a saga that moved (it would
read as a lost lease and the saga would wait for a recovery that never comes)."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from partition_helpers import PARTITIONED, count, drop_dated_partitions

from sagaz import Saga, SagaConfig, SagaStatus
from sagaz.engine.types import SagaResult
from sagaz.storage.postgresql import PostgreSQLSagaStorage
from sagaz.storage.postgresql.maintenance import (
    MaintenanceReport,
    PartitionAction,
    maintain_partitions,
)

pytestmark = pytest.mark.slow

CONCURRENCY = 24
RUN_TIMEOUT = 15.0  # a saga that waits this long for its own outcome has lost its lease


def order_saga(storage: PostgreSQLSagaStorage) -> Saga:
    async def step(ctx: Any) -> dict[str, Any]:
        ctx.emit(f"order.{ctx.step}", {"step": ctx.step}, key=ctx.saga_id)
        await asyncio.sleep(random.uniform(0, 0.004))
        return {ctx.step: True}

    saga = Saga(name="catch-up", config=SagaConfig(storage=storage))
    for name in ("reserve", "charge", "ship"):
        saga.add_step(name, step, step)
    return saga


class AuditWriter(threading.Thread):
    """Direct inserts into saga_audit_log (created_at = now()) beside the sagas' own writes."""

    def __init__(self, dsn: str, stop: threading.Event):
        super().__init__(daemon=True)
        self.dsn, self.stop, self.rows = dsn, stop, 0
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self.stop.is_set():
                    conn.execute("INSERT INTO saga_audit_log (event) VALUES ('catch-up')")
                    self.rows += 1
                    time.sleep(0.002)
        except BaseException as exc:
            self.errors.append(exc)


def _all_tables_in_one_call(dsn: str) -> MaintenanceReport:
    """maintain_all_partitions() of every table in one transaction (pg_cron's or a script's
    form): it must not deadlock with the sagas' commits either."""
    report = MaintenanceReport()
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT * FROM maintain_all_partitions()").fetchall()
    report.actions.extend(PartitionAction(*row) for row in rows)
    return report


@pytest.mark.parametrize("maintain", [maintain_partitions, _all_tables_in_one_call],
                         ids=["one-table-per-transaction", "all-tables-in-one-call"])
async def test_maintenance_catching_up_under_load_breaks_no_saga(
    pg_dsn: str, caplog: pytest.LogCaptureFixture,
    maintain: Callable[[str], MaintenanceReport],
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        drop_dated_partitions(conn)
    storage = PostgreSQLSagaStorage(pg_dsn, auto_migrate=False, retry_timeout=15)
    saga = order_saga(storage)
    stop = asyncio.Event()
    results: list[SagaResult] = []
    failures: list[BaseException] = []

    async def client() -> None:
        while not stop.is_set():
            try:
                results.append(await asyncio.wait_for(saga.execute({}), RUN_TIMEOUT))
            except BaseException as exc:  # every failure is the finding
                failures.append(exc)

    audit_stop = threading.Event()
    audit = AuditWriter(pg_dsn, audit_stop)
    caplog.set_level(logging.WARNING)
    try:
        audit.start()
        clients = [asyncio.create_task(client()) for _ in range(CONCURRENCY)]
        await asyncio.sleep(1.5)  # DEFAULT fills with sagas in flight
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            stuck = {table: count(conn, f"{table}_default") for table in PARTITIONED}
        # The worker's maintenance (one transaction per table), in a thread as the worker runs it.
        report = await asyncio.to_thread(maintain, pg_dsn)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*clients)
    finally:
        audit_stop.set()
        audit.join(10)
        await storage.close()

    assert all(stuck.values()), f"the load did not reach DEFAULT: {stuck}"
    assert report.failures == {}
    assert report.count("moved") >= 3
    assert failures == [], failures[:3]
    assert audit.errors == [], audit.errors[:1]
    assert results and {r.status for r in results} == {SagaStatus.COMPLETED}
    assert not [r for r in caplog.records if "taken over by recovery" in r.getMessage()]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for table in PARTITIONED:
            assert count(conn, f"{table}_default") == 0, table
        assert count(conn, "saga_executions") == len(results)
        (emitted,) = conn.execute(
            "SELECT count(*) FROM saga_outbox WHERE event_type LIKE 'order.%'").fetchone() or (0,)
        assert emitted == 3 * len(results)
        (direct,) = conn.execute(
            "SELECT count(*) FROM saga_audit_log WHERE event = 'catch-up'").fetchone() or (0,)
        assert direct == audit.rows
