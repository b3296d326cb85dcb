"""The partition metrics on a real PostgreSQL database, scraped over HTTP with the clock
injected (which partitions lie in the future depends on it, never on today's date): count,
size, rows in DEFAULT and future partitions per table match get_partition_statistics(); an
unreachable server costs only its components."""

from __future__ import annotations

import asyncio
from collections import Counter

import psycopg
from metrics_scrape import scrape

from sagaz.observability.endpoint import serve_metrics
from sagaz.observability.ha_metrics import HaTargets
from sagaz.storage.postgresql.maintenance import partition_statistics


async def test_partition_figures_follow_the_injected_clock(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # a row no partition holds
        conn.execute("INSERT INTO saga_executions (saga_id, saga_name, status, created_at) "
                     "VALUES (gen_random_uuid(), 'late', 'COMPLETED', '2400-01-01')")
    stats = partition_statistics(pg_dsn)
    bounded = sorted(p.range_start for p in stats
                     if p.table_name == "saga_executions" and p.range_start is not None)
    assert len(bounded) >= 3
    # "Now" is the start of the second partition: every later one is in the future.
    now = bounded[1]
    server = serve_metrics(port=0, ha=lambda: HaTargets(primary=pg_dsn),
                           clock=now.timestamp)
    try:
        found = await asyncio.to_thread(scrape, server.url)
    finally:
        server.stop()
    assert found.value("sagaz_scrape_error", component="partitions") == 0
    # A lone server: no replica, an empty (but readable) pg_stat_replication.
    assert found.value("sagaz_scrape_error", component="replication") == 0
    assert found.series("sagaz_postgres_replication_lag_seconds") == {}
    counts = Counter(p.table_name for p in stats)
    for table, count in counts.items():
        assert found.value("sagaz_partition_count", table=table) == count
        future = sum(1 for p in stats if p.table_name == table and p.range_start is not None
                     and p.range_start > now)
        assert found.value("sagaz_partition_future_count", table=table) == future
        size = sum(p.total_bytes for p in stats if p.table_name == table)
        assert found.value("sagaz_partition_size_bytes", table=table) == size
    expected = len([b for b in bounded if b > now])
    assert found.value("sagaz_partition_future_count", table="saga_executions") == expected
    assert found.value("sagaz_partition_default_rows", table="saga_executions") == 1
    assert found.value("sagaz_partition_default_rows", table="saga_outbox") == 0


async def test_an_unreachable_primary_yields_errors_within_the_deadline() -> None:
    down = "host=127.0.0.1 port=1 dbname=x user=x"
    server = serve_metrics(port=0, timeout=1.0,
                           ha=lambda: HaTargets(primary=down, nodes={"n1": (down, "replica")}))
    try:
        found = await asyncio.to_thread(scrape, server.url)
    finally:
        server.stop()
    assert found.seconds < 3
    for component in ("replication", "partitions", "postgres_n1"):
        assert found.value("sagaz_scrape_error", component=component) == 1
    assert found.value("sagaz_postgres_up", node="n1", role="replica") == 0
