"""Does monthly partitioning of ``saga_executions`` pay off? Measured, on a scratch database.

Two copies of the same rows (default 5,000,000, spread over 13 complete months):

* ``saga_executions``: the real schema (migrations applied), one partition per month created with
  ``create_saga_executions_partition(date)``;
* ``saga_executions_unpartitioned``: a plain table with the same columns and the equivalent indexes
  (primary key (saga_id, created_at), (status, created_at), the two partial indexes).
Both are VACUUM ANALYZEd, and the indexes of both freshly built (REINDEX of the partitioned one).

(a) One-month queries, each the median of ``runs`` warm runs (runs of the two tables alternate, so
background load hits both alike), with the pages each touched (EXPLAIN ANALYZE BUFFERS) and the
partitions the partitioned plan scans (pruning).

(b) Retention of the oldest month (past the default 12-month retention): ``DROP TABLE`` of its
partition (after ``LOCK TABLE`` of the parent, as ``maintain_all_partitions()`` does) versus
``DELETE ... WHERE created_at < <end of that month>`` on the plain table; then the plain
``VACUUM`` the DELETE makes necessary and (optionally) the ``VACUUM FULL`` that alone shrinks
the table. Each step starts after a CHECKPOINT, as in steady state: first touches of pages pay
their full-page images like in production.
WAL is ``pg_wal_lsn_diff`` of ``pg_current_wal_lsn()`` around the step (cluster-wide: includes
whatever other sessions wrote meanwhile) and, where pg_walinspect is available, the bytes of the
WAL records carrying the step's own transaction id (exact, immune to other sessions).

The scratch database ``sagaz_bench_<random>`` is created from template0 and dropped at the end,
also on failure. Measurement tooling: it talks to psycopg directly, outside the storage gateway.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from sagaz.benchmarks.scratch import DEFAULT_DSN, default_dsn, describe_server, scratch_database
from sagaz.errors import ConfigurationError
from sagaz.storage.postgresql.migrate import migrate

__all__ = [
    "DEFAULT_ROWS", "PartitioningBenchmark", "QueryResult", "RetentionStep", "default_dsn",
    "format_report", "main", "rows_from_env", "run_partitioning_benchmark",
]

DEFAULT_ROWS = 5_000_000
MONTHS = 13
MIN_ROWS = 130_000
PARTITIONED = "saga_executions"
UNPARTITIONED = "saga_executions_unpartitioned"

Conn = psycopg.Connection[TupleRow]


@dataclass(frozen=True)
class QueryResult:
    name: str
    sql: str
    """The query, with ``{table}`` where either table name goes."""
    partitioned_ms: list[float]
    unpartitioned_ms: list[float]
    partitioned_buffers: int
    """Shared buffers hit + read by one run (EXPLAIN ANALYZE BUFFERS), workers included."""
    unpartitioned_buffers: int
    partitioned_planning_ms: float
    """Planning time of that run: the partitioned side plans over every partition first."""
    unpartitioned_planning_ms: float
    partitions_scanned: list[str]
    """Relations the executed partitioned plan scanned; pruning works when it is one partition."""
    partitioned_plan: str
    unpartitioned_plan: str

    @property
    def partitioned_median_ms(self) -> float:
        return statistics.median(self.partitioned_ms)

    @property
    def unpartitioned_median_ms(self) -> float:
        return statistics.median(self.unpartitioned_ms)

    @property
    def speedup(self) -> float:
        """Unpartitioned median / partitioned median: > 1 means partitioning is faster."""
        return self.unpartitioned_median_ms / self.partitioned_median_ms


@dataclass(frozen=True)
class RetentionStep:
    name: str
    rows: int
    elapsed_ms: float
    wal_bytes: int
    """pg_wal_lsn_diff around the step (cluster-wide)."""
    own_wal_bytes: int | None
    """Bytes of WAL records with the step's transaction id (pg_walinspect); None if unknown."""
    size_before: int
    size_after: int
    """pg_total_relation_size (summed over the partitions for the partitioned table)."""


@dataclass(frozen=True)
class PartitioningBenchmark:
    rows: int
    months: int
    server: str
    settings: dict[str, str]
    load_seconds: float
    query_month: str
    query_partition: str
    query_month_rows: int
    partitioned_bytes: int
    unpartitioned_bytes: int
    queries: list[QueryResult]
    retention_month: str
    drop: RetentionStep
    delete: RetentionStep
    vacuum: RetentionStep
    vacuum_full: RetentionStep | None
    total_seconds: float


# One month of the table: rows of a (UTC) month, bounds given as literals (not parameters) so the
# planner prunes at plan time, as it does for the custom plans of the application's queries.
_QUERIES: list[tuple[str, str]] = [
    ("count of the month",
     "SELECT count(*) FROM {table} WHERE created_at >= {start} AND created_at < {end}"),
    ("count by status",
     "SELECT status, count(*) FROM {table} WHERE created_at >= {start} AND created_at < {end} "
     "GROUP BY status"),
    ("count of FAILED",
     "SELECT count(*) FROM {table} WHERE status = 'FAILED' "
     "AND created_at >= {start} AND created_at < {end}"),
    ("FAILED by saga name",
     "SELECT saga_name, count(*), max(updated_at - created_at) FROM {table} "
     "WHERE status = 'FAILED' AND created_at >= {start} AND created_at < {end} "
     "GROUP BY saga_name"),
    ("latest 50 of the month",
     "SELECT saga_id, saga_name, status, created_at FROM {table} "
     "WHERE created_at >= {start} AND created_at < {end} ORDER BY created_at DESC LIMIT 50"),
    ("latest 50 FAILED",
     "SELECT saga_id, saga_name, status, created_at FROM {table} WHERE status = 'FAILED' "
     "AND created_at >= {start} AND created_at < {end} ORDER BY created_at DESC LIMIT 50"),
]

# Rows in created_at order (as an append-only table receives them): uuid ids, four saga names,
# ~90% COMPLETED, a few percent compensated/failed, a small jsonb context, 10% idempotency keys.
_LOAD = """
INSERT INTO saga_executions (saga_id, saga_name, status, context, failed_step, error,
                             idempotency_key, created_at, updated_at, version)
SELECT gen_random_uuid(),
       (ARRAY['order_checkout', 'payment_refund', 'inventory_sync', 'user_signup'])[1 + i %% 4],
       g.status,
       jsonb_build_object('order_id', i, 'customer_id', (i * 7919) %% 100000,
                          'amount_cents', (i * 31) %% 100000,
                          'currency', (ARRAY['EUR', 'USD', 'GBP'])[1 + i %% 3]),
       CASE WHEN g.status IN ('FAILED', 'COMPENSATED') THEN 'charge_payment' END,
       CASE WHEN g.status = 'FAILED' THEN 'card declined' END,
       CASE WHEN i %% 10 = 0 THEN 'idem-' || i END,
       g.created_at,
       g.created_at + (1 + i %% 30) * interval '1 second',
       CASE WHEN g.status IN ('PENDING', 'RUNNING') THEN 1 ELSE 4 END
FROM (
    SELECT i,
           %(start)s::timestamptz + (%(end)s::timestamptz - %(start)s::timestamptz)
               * ((i - 1)::float8 / %(rows)s) AS created_at,
           CASE WHEN r < 0.90 THEN 'COMPLETED' WHEN r < 0.95 THEN 'COMPENSATED'
                WHEN r < 0.98 THEN 'FAILED' WHEN r < 0.99 THEN 'RUNNING'
                WHEN r < 0.995 THEN 'COMPENSATING' ELSE 'PENDING' END AS status
    FROM (SELECT i, random() AS r FROM generate_series(1::bigint, %(rows)s) i) s
) g
"""

_UNPARTITIONED_DDL = [
    f"CREATE TABLE {UNPARTITIONED} (LIKE {PARTITIONED} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
    "INCLUDING STORAGE INCLUDING COMPRESSION)",
    f"INSERT INTO {UNPARTITIONED} SELECT * FROM {PARTITIONED}",
    # Indexes after the load (faster), the same as the partitioned table's.
    f"ALTER TABLE {UNPARTITIONED} ADD CONSTRAINT {UNPARTITIONED}_pkey "
    "PRIMARY KEY (saga_id, created_at)",
    f"CREATE INDEX {UNPARTITIONED}_status_created_at ON {UNPARTITIONED} (status, created_at)",
    f"CREATE INDEX {UNPARTITIONED}_created_at ON {UNPARTITIONED} (created_at)",
    f"CREATE INDEX {UNPARTITIONED}_lease_expires_at ON {UNPARTITIONED} (lease_expires_at) "
    "WHERE lease_expires_at IS NOT NULL",
    f"CREATE INDEX {UNPARTITIONED}_idempotency_key ON {UNPARTITIONED} (idempotency_key) "
    "WHERE idempotency_key IS NOT NULL",
]

_SETTINGS = ("server_version", "shared_buffers", "work_mem", "max_parallel_workers_per_gather",
             "jit", "full_page_writes", "wal_level")


def rows_from_env(default: int = DEFAULT_ROWS) -> int:
    """``SAGAZ_BENCH_PARTITION_ROWS`` as a row count (underscores allowed), else ``default``."""
    raw = os.environ.get("SAGAZ_BENCH_PARTITION_ROWS")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(
            f"SAGAZ_BENCH_PARTITION_ROWS must be a number of rows such as 500_000, got {raw!r}"
        ) from None


def run_partitioning_benchmark(
    dsn: str | None = None, rows: int = DEFAULT_ROWS, runs: int = 5, vacuum_full: bool = True
) -> PartitioningBenchmark:
    """Create a scratch database next to ``dsn``'s, measure, drop it; return the numbers.

    ``dsn`` names a role allowed to CREATE DATABASE (and CHECKPOINT: a superuser or
    pg_checkpoint); its database is only used to create and drop the scratch one.
    """
    if rows < MIN_ROWS:
        raise ConfigurationError(
            f"rows must be at least {MIN_ROWS:,} (10,000 per month over {MONTHS} months), "
            f"got {rows:,}")
    if runs < 1:
        raise ConfigurationError(f"runs must be at least 1, got {runs}")
    base = dsn or default_dsn()
    started = time.perf_counter()
    with scratch_database(base) as scratch, psycopg.connect(scratch, autocommit=True) as conn:
        migrate(conn)
        # Index builds and VACUUM of the setup only; the measured queries keep the defaults.
        conn.execute("SET maintenance_work_mem = '512MB'")
        settings = {name: str(_scalar(conn, f"SHOW {name}")) for name in _SETTINGS}
        months = _month_starts(
            _scalar(conn, "SELECT date_trunc('month', now() AT TIME ZONE 'UTC')"))
        partitions = [str(_scalar(conn, "SELECT create_saga_executions_partition(%s)",
                                  (m.date(),))) for m in months[:-1]]
        load_started = time.perf_counter()
        conn.execute(_LOAD, {"start": months[0], "end": months[-1], "rows": rows})
        for statement in _UNPARTITIONED_DDL:
            conn.execute(statement.encode())
        # The partitions' indexes grew row by row (random uuids split pages); the plain table's
        # were built in one pass. Rebuilt, so neither side is favoured by denser indexes.
        conn.execute(f"REINDEX TABLE {PARTITIONED}".encode())
        conn.execute(f"VACUUM ANALYZE {PARTITIONED}".encode())
        conn.execute(f"VACUUM ANALYZE {UNPARTITIONED}".encode())
        load_seconds = time.perf_counter() - load_started
        conn.execute("RESET maintenance_work_mem")

        middle = len(partitions) // 2
        start, end = months[middle], months[middle + 1]
        queries = [_measure_query(conn, name, text, start, end, runs) for name, text in _QUERIES]
        month_rows = int(_scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(partitions[middle]))))
        partitioned_bytes = _table_bytes(conn, PARTITIONED)
        unpartitioned_bytes = _table_bytes(conn, UNPARTITIONED)

        walinspect = _try_walinspect(conn)
        drop, delete, vacuum, *full = _retention(
            conn, partitions[0], months[1], walinspect, vacuum_full)
    return PartitioningBenchmark(
        rows=rows, months=MONTHS, server=describe_server(base), settings=settings,
        load_seconds=load_seconds, query_month=f"{start:%Y-%m}", query_partition=partitions[middle],
        query_month_rows=month_rows, partitioned_bytes=partitioned_bytes,
        unpartitioned_bytes=unpartitioned_bytes, queries=queries,
        retention_month=f"{months[0]:%Y-%m}", drop=drop, delete=delete, vacuum=vacuum,
        vacuum_full=full[0] if full else None, total_seconds=time.perf_counter() - started)


def _scalar(conn: Conn, query: Any, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None, "a scalar query returned no row"
    return row[0]


def _month_starts(current: datetime) -> list[datetime]:
    """The first instants (UTC) of the MONTHS months before ``current``'s, and of ``current``'s:
    MONTHS complete months of history, the oldest old enough for the default 12-month retention
    (maintain_all_partitions drops a partition whose whole range is older than now() - 12 months).
    """
    index = current.year * 12 + current.month - 1
    return [datetime(i // 12, i % 12 + 1, 1, tzinfo=UTC)
            for i in range(index - MONTHS, index + 1)]


def _table_bytes(conn: Conn, table: str) -> int:
    """pg_total_relation_size of a plain table, or the sum over a partitioned table's partitions
    (a partitioned table itself has no storage: its own size is 0)."""
    return int(_scalar(
        conn, "SELECT CASE c.relkind WHEN 'p' THEN (SELECT sum(pg_total_relation_size(t.relid)) "
              "FROM pg_partition_tree(c.oid) t) ELSE pg_total_relation_size(c.oid) END "
              "FROM pg_class c WHERE c.oid = %s::regclass", (table,)))


def _measure_query(
    conn: Conn, name: str, template: str, start: datetime, end: datetime, runs: int
) -> QueryResult:
    def build(table: str) -> sql.Composed:
        return sql.SQL(template).format(
            table=sql.Identifier(table), start=sql.Literal(start), end=sql.Literal(end))

    tables = (build(PARTITIONED), build(UNPARTITIONED))
    for query in tables:  # warm up: caches, and JIT/plan paths taken once
        conn.execute(query, prepare=False).fetchall()
    timings: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for query, times in zip(tables, timings, strict=True):
            began = time.perf_counter()
            conn.execute(query, prepare=False).fetchall()
            times.append((time.perf_counter() - began) * 1000)
    analyzed = [_scalar(conn, sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ") + q)
                for q in tables]
    plans = ["\n".join(str(r[0]) for r in conn.execute(sql.SQL("EXPLAIN (COSTS OFF) ") + q))
             for q in tables]
    documents = [_json_plan(a) for a in analyzed]
    roots = [d["Plan"] for d in documents]
    return QueryResult(
        name=name, sql=template.replace("{start}", "<month start>").replace("{end}", "<next>"),
        partitioned_ms=timings[0], unpartitioned_ms=timings[1],
        partitioned_buffers=_buffers(roots[0]), unpartitioned_buffers=_buffers(roots[1]),
        partitioned_planning_ms=float(documents[0]["Planning Time"]),
        unpartitioned_planning_ms=float(documents[1]["Planning Time"]),
        partitions_scanned=sorted(set(_relations(roots[0]))),
        partitioned_plan=plans[0], unpartitioned_plan=plans[1])


def _json_plan(value: Any) -> dict[str, Any]:
    document = json.loads(value) if isinstance(value, str) else value
    return dict(document[0])


def _buffers(node: dict[str, Any]) -> int:
    return int(node.get("Shared Hit Blocks", 0)) + int(node.get("Shared Read Blocks", 0))


def _relations(node: dict[str, Any]) -> Iterator[str]:
    """Relations scanned by the executed nodes of a plan (not those pruned at run time)."""
    if "Relation Name" in node and node.get("Actual Loops", 1) > 0:
        yield str(node["Relation Name"])
    for child in node.get("Plans", []):
        yield from _relations(child)


def _try_walinspect(conn: Conn) -> bool:
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
    except psycopg.Error:
        return False
    return True


@contextmanager
def _wal_kept(conn: Conn, walinspect: bool) -> Iterator[bool]:
    """Keeps the WAL written from here on (a temporary replication slot), so pg_walinspect can
    still read it after a checkpoint (timed, or another session's); yields whether it can."""
    slot = f"sagaz_bench_{secrets.token_hex(6)}"
    kept = False
    if walinspect:
        try:
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true, true)", (slot,))
            kept = True
        except psycopg.Error:  # no REPLICATION privilege, or no free slot: cluster-wide only
            pass
    try:
        yield kept
    finally:
        if kept:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))


def _lsn(conn: Conn) -> str:
    return str(_scalar(conn, "SELECT pg_current_wal_lsn()"))


def _wal_between(conn: Conn, before: str, after: str) -> int:
    return int(_scalar(conn, "SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", (after, before)))


def _own_wal(conn: Conn, before: str, after: str, xid: int, kept: bool) -> int | None:
    if not kept:
        return None
    return int(_scalar(
        conn, "SELECT coalesce(sum(record_length), 0) FROM pg_get_wal_records_info(%s, %s) "
              "WHERE xid::text::bigint = %s", (before, after, xid)))


def _retention_step(
    conn: Conn, name: str, table: str, statements: list[sql.Composed], rows: int | None,
    walinspect: bool, transaction: bool = True,
) -> RetentionStep:
    """Runs ``statements`` (in one transaction unless ``transaction`` is false: VACUUM) after a
    CHECKPOINT; ``rows`` defaults to the row count of the last statement."""
    size_before = _table_bytes(conn, table)
    with _wal_kept(conn, walinspect and transaction) as kept:
        conn.execute("CHECKPOINT")
        before = _lsn(conn)
        began = time.perf_counter()
        with conn.transaction() if transaction else nullcontext():
            # Plain VACUUM has no transaction id: only the cluster-wide WAL figure for it.
            xid = int(_scalar(conn, "SELECT txid_current() % 4294967296")) if transaction else 0
            count = sum(conn.execute(statement).rowcount for statement in statements)
        elapsed = (time.perf_counter() - began) * 1000
        after = _lsn(conn)
        own = _own_wal(conn, before, after, xid, kept)
    return RetentionStep(
        name=name, rows=count if rows is None else rows, elapsed_ms=elapsed,
        wal_bytes=_wal_between(conn, before, after), own_wal_bytes=own,
        size_before=size_before, size_after=_table_bytes(conn, table))


def _retention(
    conn: Conn, partition: str, cutoff: datetime, walinspect: bool, vacuum_full: bool
) -> list[RetentionStep]:
    """DROP of ``partition`` vs DELETE of the same rows (created_at < ``cutoff``), then VACUUM."""
    rows = int(_scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(partition))))
    plain = sql.Identifier(UNPARTITIONED)
    steps = [
        # The statements maintain_all_partitions() runs for an expired partition (its saga_steps
        # cleanup aside: saga_steps is empty here).
        _retention_step(conn, f"DROP TABLE {partition}", PARTITIONED, [
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(PARTITIONED)),
            sql.SQL("DROP TABLE {}").format(sql.Identifier(partition))], rows, walinspect),
        _retention_step(
            conn, f"DELETE ... WHERE created_at < '{cutoff:%Y-%m-%d}'", UNPARTITIONED,
            [sql.SQL("DELETE FROM {} WHERE created_at < {}").format(plain, sql.Literal(cutoff))],
            None, walinspect),
    ]
    for command in ["VACUUM", "VACUUM FULL"] if vacuum_full else ["VACUUM"]:
        steps.append(_retention_step(
            conn, f"{command} (after the DELETE)", UNPARTITIONED,
            [sql.SQL(command + " {}").format(plain)], steps[1].rows, walinspect, False))
    return steps


def _mb(n: float) -> str:
    return f"{n / 1024 / 1024:,.1f} MB"


def _wal(n: int) -> str:  # small amounts in kB, large ones in MB
    return f"{n / 1024:,.0f} kB" if n < 10 * 1024 * 1024 else _mb(n)


def format_report(result: PartitioningBenchmark) -> str:
    """A readable report of ``result``: tables, plans, and what they say."""
    out: list[str] = []
    add = out.append
    s = result.settings
    add(f"Partitioning benchmark: {result.rows:,} saga_executions rows over {result.months} "
        f"months; PostgreSQL {s['server_version']} at {result.server}")
    add(f"  settings: shared_buffers={s['shared_buffers']} work_mem={s['work_mem']} "
        f"max_parallel_workers_per_gather={s['max_parallel_workers_per_gather']} jit={s['jit']} "
        f"full_page_writes={s['full_page_writes']} wal_level={s['wal_level']}")
    add(f"  load + indexes + REINDEX + VACUUM ANALYZE of both tables: "
        f"{result.load_seconds:,.1f} s; sizes: partitioned {_mb(result.partitioned_bytes)}, "
        f"unpartitioned {_mb(result.unpartitioned_bytes)}")
    add("")
    runs = len(result.queries[0].partitioned_ms) if result.queries else 0
    add(f"(a) One-month queries, month {result.query_month} ({result.query_month_rows:,} rows, "
        f"partition {result.query_partition}); median of {runs} warm runs, ms")
    add(f"  {'query':<24} {'partitioned':>12} {'unpartitioned':>14} {'speedup':>8} "
        f"{'buffers p/u':>19} {'planning p/u':>13}  partitions scanned")
    for q in result.queries:
        add(f"  {q.name:<24} {q.partitioned_median_ms:>12.2f} {q.unpartitioned_median_ms:>14.2f} "
            f"{q.speedup:>7.2f}x {q.partitioned_buffers:>9,}/{q.unpartitioned_buffers:<9,} "
            f"{q.partitioned_planning_ms:>6.2f}/{q.unpartitioned_planning_ms:<6.2f}"
            f" {', '.join(q.partitions_scanned)}")
    add("  speedup = unpartitioned / partitioned (< 1.00x: partitioning is slower); buffers = "
        "shared pages hit+read by one run; planning = ms of one run (in the medians)")
    add("  Both tables have the same indexes, created_at included: the partitioned side wins "
        "where a month's partition replaces a wider index range or heap, not on index probes.")
    add("  all runs, ms (partitioned | unpartitioned):")
    for q in result.queries:
        add(f"    {q.name:<24} {' '.join(f'{t:.1f}' for t in q.partitioned_ms)} | "
            f"{' '.join(f'{t:.1f}' for t in q.unpartitioned_ms)}")
    add("")
    add("  Plans (EXPLAIN, COSTS OFF):")
    for q in result.queries:
        add(f"  -- {q.name}: {q.sql}")
        add("     partitioned:")
        out.extend(f"       {line}" for line in q.partitioned_plan.splitlines())
        add("     unpartitioned:")
        out.extend(f"       {line}" for line in q.unpartitioned_plan.splitlines())
    add("")
    add(f"(b) Retention of the oldest month ({result.retention_month}, {result.drop.rows:,} rows); "
        "each step after a CHECKPOINT")
    add(f"  {'step':<46} {'elapsed':>11} {'WAL (lsn diff)':>15} {'own-xid WAL':>12} "
        f"{'size before':>12} {'size after':>12}")
    steps = [result.drop, result.delete, result.vacuum]
    if result.vacuum_full is not None:
        steps.append(result.vacuum_full)
    for step in steps:
        own = "-" if step.own_wal_bytes is None else _wal(step.own_wal_bytes)
        add(f"  {step.name:<46} {step.elapsed_ms:>8,.1f} ms {_wal(step.wal_bytes):>15} {own:>12} "
            f"{_mb(step.size_before):>12} {_mb(step.size_after):>12}")
    add("")
    add("Summary")
    out.extend(f"  {line}" for line in _summary(result))
    add(f"  total benchmark time: {result.total_seconds:,.1f} s")
    return "\n".join(out)


def _summary(result: PartitioningBenchmark) -> list[str]:
    lines = []
    faster = [q for q in result.queries if q.speedup >= 1.2]
    slower = [q for q in result.queries if q.speedup < 0.9]
    even = [q for q in result.queries if q not in faster and q not in slower]
    if faster:
        lines.append("partitioning faster: " + ", ".join(
            f"{q.name} {q.speedup:.1f}x" for q in faster))
    if even:
        lines.append("no real difference (0.9x-1.2x): " + ", ".join(
            f"{q.name} {q.speedup:.2f}x" for q in even))
    if slower:
        lines.append("partitioning SLOWER: " + ", ".join(
            f"{q.name} {q.speedup:.2f}x" for q in slower))
    pruned = all(len(q.partitions_scanned) == 1 for q in result.queries)
    lines.append("pruning: every partitioned plan scanned one partition" if pruned else
                 "pruning: NOT every partitioned plan scanned a single partition (see above)")
    drop, delete = result.drop, result.delete
    drop_wal = drop.own_wal_bytes if drop.own_wal_bytes is not None else drop.wal_bytes
    delete_wal = delete.own_wal_bytes if delete.own_wal_bytes is not None else delete.wal_bytes
    lines.append(
        f"retention: DROP {drop.elapsed_ms:,.1f} ms vs DELETE {delete.elapsed_ms:,.1f} ms "
        f"({delete.elapsed_ms / max(drop.elapsed_ms, 0.001):,.0f}x); WAL {_wal(drop_wal)} vs "
        f"{_wal(delete_wal)} ({delete_wal / max(drop_wal, 1):,.0f}x)")
    lines.append(
        f"DROP returned {_mb(drop.size_before - drop.size_after)} at once; DELETE changed the "
        f"table size by {_mb(delete.size_after - delete.size_before)}, and so did plain VACUUM "
        f"({_mb(result.vacuum.size_after - result.vacuum.size_before)}, "
        f"{result.vacuum.elapsed_ms / 1000:,.1f} s, {_wal(result.vacuum.wal_bytes)} WAL)")
    full = result.vacuum_full
    if full is not None:
        lines.append(
            f"only VACUUM FULL (ACCESS EXCLUSIVE for {full.elapsed_ms / 1000:,.1f} s, "
            f"{_wal(full.wal_bytes)} WAL) shrank it by {_mb(full.size_before - full.size_after)}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sagaz.benchmarks.partitioning",
        description="Measure monthly partitioning of saga_executions against a plain table "
                    "on a scratch PostgreSQL database (created and dropped).")
    parser.add_argument(
        "--dsn", default=None,
        help="server to use, as a role allowed to CREATE DATABASE and CHECKPOINT "
             "(default: $SAGAZ_BENCH_PG_DSN, $SAGAZ_TEST_PG_DSN, or " + DEFAULT_DSN + ")")
    parser.add_argument(
        "--rows", type=int, default=None,
        help=f"rows per table (default: $SAGAZ_BENCH_PARTITION_ROWS or {DEFAULT_ROWS:,})")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per query (default 5)")
    parser.add_argument("--no-vacuum-full", action="store_true",
                        help="skip the VACUUM FULL step (the longest one)")
    args = parser.parse_args(argv)
    try:
        rows = rows_from_env() if args.rows is None else args.rows
        result = run_partitioning_benchmark(
            args.dsn, rows=rows, runs=args.runs, vacuum_full=not args.no_vacuum_full)
    except ConfigurationError as exc:
        parser.error(str(exc))
    print(format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
