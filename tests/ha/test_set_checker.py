"""The set checker judges real histories against a real database: a clean load passes, and it
catches what a bad failover does (acknowledged sagas missing, a step run twice, a saga left
unfinished until recovery takes it over)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import psycopg
from pg_fixtures import as_url
from set_checker import check, recovery_time, write_gap
from steady_load import SAGA_NAME, LoadReport, Op, SteadyLoad, recover_in_flight

from sagaz import SagaStatus
from sagaz.engine.types import SagaState
from sagaz.storage.postgresql import PostgreSQLSagaStorage


def _load(url: str, seconds: float = 1.0) -> tuple[LoadReport, float]:
    with SteadyLoad(url, rate=100.0) as load:
        time.sleep(seconds / 2)
        middle = time.perf_counter()
        time.sleep(seconds / 2)
        return load.stop(), middle


def test_a_clean_history_passes(pg_dsn: str) -> None:
    report, middle = _load(as_url(pg_dsn))
    result = check("clean", report, pg_dsn, fault=middle)
    print(result.line())
    assert result.ok and result.client_errors == 0
    assert result.acknowledged == result.found == len(report.history) > 50
    assert result.rto == 0.0, "no outage"
    assert 0 < result.gap < 1.0


def test_lost_and_duplicated_steps_are_reported(pg_dsn: str) -> None:
    report, middle = _load(as_url(pg_dsn))
    gone = [op.saga_id for op in report.history[:2]]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM saga_steps WHERE saga_id = ANY(%s::uuid[])", (gone,))
        conn.execute("DELETE FROM saga_executions WHERE saga_id = ANY(%s::uuid[])", (gone,))
        # A saga whose row says COMPLETED but whose steps went missing is not "found" either.
        third = report.history[2].saga_id
        conn.execute("DELETE FROM saga_steps WHERE saga_id = %s AND step_name = 'ship'", (third,))
    report.steps.actions[(report.history[3].saga_id, "charge")] += 1
    fifth = report.history[4].saga_id
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        # As a commit applied twice would: the saga's completion event and history row again.
        conn.execute(
            "INSERT INTO saga_outbox (event_id, saga_id, event_type, aggregate_id, payload, "
            "headers) SELECT gen_random_uuid(), saga_id, event_type, aggregate_id, payload, "
            "headers FROM saga_outbox WHERE saga_id = %s", (fifth,))
        conn.execute("INSERT INTO saga_audit_log (saga_id, event, details, created_at) "
                     "SELECT saga_id, event, details, created_at FROM saga_audit_log "
                     "WHERE saga_id = %s", (fifth,))
    result = check("broken", report, pg_dsn, fault=middle)
    print(result.line())
    assert sorted(result.lost) == sorted([*gone, third])
    assert result.duplicated == [(report.history[3].saga_id, "charge")]
    assert result.duplicated_events == [(fifth, "SagaCompleted"), (fifth, "saga_completed")]
    assert not result.ok


def test_a_saga_interrupted_by_the_fault_is_finished_by_recovery(pg_dsn: str) -> None:
    url = as_url(pg_dsn)
    report, middle = _load(url, seconds=0.5)
    # As a client whose call failed after the saga was created: RUNNING, its lease running out.
    stranded = str(uuid.uuid4())

    async def create() -> None:
        storage = PostgreSQLSagaStorage(url, auto_migrate=False)
        try:
            await storage.create(SagaState(stranded, SAGA_NAME, SagaStatus.RUNNING, {},
                                           lease_owner="a-dead-client"), 0.5)
        finally:
            await storage.close()

    asyncio.run(create())
    report.history.append(Op(stranded, time.perf_counter(), time.perf_counter(), None,
                             "StorageError: connection lost"))
    before = check("before recovery", report, pg_dsn, fault=middle)
    assert before.unfinished == [stranded] and before.in_flight == 1 and not before.ok
    recovered = recover_in_flight(url, report, lease_seconds=0.5)
    assert recovered.finished == {stranded: SagaStatus.COMPENSATED}
    after = check("after recovery", report, pg_dsn, fault=middle)
    print(after.line())
    assert after.ok and after.in_flight == 1 and after.client_errors == 1


def test_the_write_gap_counts_the_edges_of_the_window() -> None:
    report = LoadReport(0, {}, [], Counter(), [10.0, 10.5, 13.0], 0.0)
    assert write_gap(report, 9.0, 14.0) == 2.5
    assert write_gap(report, 9.0, 20.0) == 7.0
    assert write_gap(report, 11.0, 12.0) == 1.0


def test_the_recovery_time_runs_from_the_fault_to_the_end_of_the_outage() -> None:
    times = [t / 10 for t in range(100, 120)] + [t / 10 for t in range(150, 170)]
    report = LoadReport(0, {}, [], Counter(), times, 0.0)
    # Writes stopped at 11.9, the fault was noticed at 11.5, writes resumed at 15.0.
    assert recovery_time(report, fault=11.5, start=10.5, end=17.0) == 3.5
    steady = LoadReport(0, {}, [], Counter(), [t / 10 for t in range(100, 170)], 0.0)
    assert recovery_time(steady, fault=11.5, start=10.5, end=17.0) == 0.0
    assert recovery_time(steady, fault=18.0, start=17.0, end=19.0) is None
