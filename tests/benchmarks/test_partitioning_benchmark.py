"""Partitioning benchmark (not part of the default suite: run `make bench`).

Monthly partitions of saga_executions against an unpartitioned copy of the same rows, on a scratch
database created and dropped by the benchmark: one-month queries (medians of warm runs) and the
retention of one month (DROP of a partition against DELETE). Prints the report; asserts only what
cannot flake: every partitioned plan scans one partition, the DROP writes far less WAL than the
DELETE, the DROP shrinks the table and the DELETE does not.

Rows: SAGAZ_BENCH_PARTITION_ROWS (default 5,000,000: ~100 s on 2 cores; 1_000_000: ~20 s;
at least 130,000).
Server: SAGAZ_BENCH_PG_DSN or SAGAZ_TEST_PG_DSN (default postgres@127.0.0.1:5432, trust auth),
a role allowed to CREATE DATABASE and CHECKPOINT. An unreachable server fails the test.
"""

import pytest

from sagaz.benchmarks.partitioning import format_report, rows_from_env, run_partitioning_benchmark


@pytest.mark.timeout(1800)
def test_partitioning_benchmark() -> None:
    result = run_partitioning_benchmark(rows=rows_from_env())
    print("\n" + format_report(result))

    for query in result.queries:
        assert query.partitions_scanned == [result.query_partition], query.name

    # The DROP rewrites a few catalog pages (~100 kB after a checkpoint); the DELETE logs every
    # row it removes and a full-page image of every heap page it touches: >= 20x at 130,000 rows,
    # ~1000x at 5,000,000. The own-transaction figures when pg_walinspect is there (other
    # sessions' WAL excluded), else the cluster-wide ones.
    drop, delete = result.drop, result.delete
    if drop.own_wal_bytes is not None and delete.own_wal_bytes is not None:
        assert drop.own_wal_bytes * 5 < delete.own_wal_bytes
    else:
        assert drop.wal_bytes * 5 < delete.wal_bytes

    assert drop.size_after < drop.size_before
    assert delete.size_after == delete.size_before > 0
