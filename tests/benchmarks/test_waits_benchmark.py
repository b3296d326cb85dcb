"""Timers at scale on PostgreSQL (not part of the default suite: `make bench`).

100,000 sagas are parked WAITING on a durable delay; a few hundred of them fire during the run,
the rest hours later. A worker loop calls ``resume_due`` every INTERVAL seconds, as `sagaz worker`
does. Measured, median of 3 runs with the spread:
- the queries per worker interval that look for due sagas (target: 1, whatever the number of
  waiting sagas) and how long that query takes with 100,000 waiting;
- resume latency: from the timer's due time to the saga's next step running (target: p99 below
  2 x INTERVAL).
Asserts the query count and the latency target with the slack the target already has.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import psycopg
import pytest

from sagaz import Saga, SagaConfig, SagaStatus
from sagaz.engine.waits import resume_due
from sagaz.storage.postgresql import PostgreSQLSagaStorage

WAITING = 100_000
FIRING = 400
INTERVAL = 0.5
DELAY = 3600.0  # the delay step's seconds: parked sagas reached it an hour before they fire
FIRE_WINDOW = 4.0  # the firing sagas' timers fall due over this many seconds


def _park(dsn: str) -> float:
    """Park WAITING sagas in bulk, as the engine leaves them: the delay step reached, the
    timer stored in wake_at, a day away. Then FIRING of them are made to fall due within
    FIRE_WINDOW seconds from now (returned), the set-up time left out."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO saga_executions (saga_id, saga_name, status, context, created_at, "
            "updated_at, wake_at) "
            "SELECT gen_random_uuid(), 'bench-wait', 'WAITING', '{}', now(), now(), "
            "now() + make_interval(secs => 86400 + i) FROM generate_series(1, %(n)s) AS i",
            {"n": WAITING})
        conn.execute(
            "INSERT INTO saga_steps (saga_id, step_name, status, started_at) "
            "SELECT saga_id, 'cool_off', 'PENDING', wake_at - make_interval(secs => %(d)s) "
            "FROM saga_executions", {"d": DELAY})
        conn.execute("ANALYZE saga_executions")
        start = time.time()
        conn.execute(
            "WITH firing AS (SELECT saga_id, to_timestamp(%(start)s + %(window)s * random()) "
            "AS due FROM saga_executions ORDER BY md5(saga_id::text) LIMIT %(k)s), "
            "timers AS (UPDATE saga_executions AS s SET wake_at = f.due FROM firing f "
            "WHERE s.saga_id = f.saga_id) "
            "UPDATE saga_steps AS t SET started_at = f.due - make_interval(secs => %(d)s) "
            "FROM firing f WHERE t.saga_id = f.saga_id",
            {"start": start + 1.0, "window": FIRE_WINDOW, "k": FIRING, "d": DELAY})
    return start


def _claim_query_ms(dsn: str) -> float:
    """The due-saga query's own execution time with every saga waiting (EXPLAIN ANALYZE of its
    inner SELECT: the UPDATE would claim)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        plan: Any = conn.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) SELECT saga_id, created_at FROM saga_executions "
            "WHERE status = 'WAITING' AND wake_at <= now() AND (lease_owner IS NULL OR "
            "lease_expires_at < now()) ORDER BY wake_at LIMIT 100 FOR UPDATE SKIP LOCKED"
        ).fetchone()
    # The partition holding the sagas answers from its copy of the partial index
    # (<partition>_wake_at_idx); empty premade partitions may be scanned, at no cost.
    assert "wake_at_idx" in str(plan), plan
    return float(plan[0][0]["Execution Time"])


async def _one_run(dsn: str) -> tuple[list[float], list[int], float]:
    start = _park(dsn)
    query_ms = _claim_query_ms(dsn)
    ran: dict[str, float] = {}

    async def after(ctx: Any) -> None:
        ran[ctx.saga_id] = time.time()

    storage = PostgreSQLSagaStorage(dsn, max_size=8)
    config = SagaConfig(storage=storage, lease_seconds=30, lifecycle_events=False)
    saga = Saga(name="bench-wait", config=config).add_delay("cool_off", seconds=DELAY)
    saga.add_step("after", after)
    queries: list[int] = []
    claim = storage.claim_due
    calls = 0

    async def counted(*args: Any, **kwargs: Any) -> list[str]:
        nonlocal calls
        calls += 1
        return await claim(*args, **kwargs)

    storage.claim_due = counted  # type: ignore[method-assign]
    try:
        deadline = start + 1.0 + FIRE_WINDOW + 4 * INTERVAL
        while time.time() < deadline or len(ran) < FIRING:
            calls = 0
            began = time.monotonic()
            report = await resume_due(config, sagas=[saga], limit=500)
            queries.append(calls)
            assert not report.errors, report.errors
            assert all(s is SagaStatus.COMPLETED for s in report.resumed.values())
            await asyncio.sleep(max(0.0, INTERVAL - (time.monotonic() - began)))
            assert time.time() < deadline + 30, "due sagas were not resumed"
        with psycopg.connect(dsn) as conn:
            due = dict(conn.execute(
                "SELECT saga_id::text, extract(epoch FROM started_at)::float8 + %s "
                "FROM saga_steps WHERE step_name = 'cool_off' AND status = 'COMPLETED'",
                (DELAY,)).fetchall())
    finally:
        await storage.close()
    assert set(due) == set(ran) and len(ran) == FIRING
    latencies = [ran[sid] - due[sid] for sid in ran]
    return latencies, queries, query_ms


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@pytest.mark.timeout(900)
def test_timers_of_100k_waiting_sagas(pg_server: str, request: pytest.FixtureRequest) -> None:
    p50s, p99s, query_times, max_queries = [], [], [], []
    for _ in range(3):
        dsn = request.getfixturevalue("pg_dsn") if not p50s else _fresh(request)
        latencies, queries, query_ms = asyncio.run(_one_run(dsn))
        p50s.append(_p(latencies, 0.50))
        p99s.append(_p(latencies, 0.99))
        query_times.append(query_ms)
        max_queries.append(max(queries))

    def show(values: list[float], unit: str, scale: float = 1.0) -> str:
        return (f"median {statistics.median(values) * scale:.1f} {unit} "
                f"(runs: {', '.join(f'{v * scale:.1f}' for v in values)})")

    print(f"\nwaits: {WAITING:,} parked, {FIRING} fire within {FIRE_WINDOW:g}s, worker interval "
          f"{INTERVAL:g}s\n  due-saga query with {WAITING:,} waiting: {show(query_times, 'ms')}"
          f"\n  queries per interval (max): {max_queries}"
          f"\n  resume latency p50: {show(p50s, 'ms', 1000)}"
          f"\n  resume latency p99: {show(p99s, 'ms', 1000)} (target < {2 * INTERVAL * 1000:.0f})")
    assert max(max_queries) <= 1  # one query per interval (fewer than 500 due at once)
    assert statistics.median(p99s) < 2 * INTERVAL


def _fresh(request: pytest.FixtureRequest) -> str:
    """Another fresh database for the next run (the pg_dsn fixture gives one per test)."""
    from pg_fixtures import _create_database, _drop_database, dsn_for

    template: str = request.getfixturevalue("pg_template")
    name = f"{template}_waits_{len(request.node.stash.setdefault(_RUNS, []))}"
    request.node.stash[_RUNS].append(name)
    _create_database(name, template)
    request.addfinalizer(lambda: _drop_database(name))
    return dsn_for(name)


_RUNS = pytest.StashKey[list[str]]()
