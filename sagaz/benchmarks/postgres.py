"""The PostgreSQL write path under load: 3-step no-op sagas, every transition durable
(synchronous_commit on), on a scratch database, direct and through a real PgBouncer in
transaction mode, each without and with TLS (the cost of encryption, side by side).

Measures, each as the median of ``runs`` runs:
- throughput: ``sagas`` runs spread over ``concurrency`` coroutines (closed loop);
- latency: ``run()`` at a fixed offered rate (open loop: each saga is due at its slot, and its
  latency counts from that slot, so a stall shows up instead of delaying the next starts);
- footprint: state rows, audit rows, table bytes and WAL bytes per saga.

TLS: direct with ``sslmode=require`` (when the server has ssl on), and a PgBouncer that requires
TLS from its clients (certificates made for the run by :mod:`sagaz.tls`) and uses it to the
server when the server offers it. The plain paths use ``sslmode=disable``: the same server must
accept both (a server with hostssl rules only refuses the plain ones).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sagaz.benchmarks.engine import closed_loop_rate, open_loop_latency, percentile
from sagaz.benchmarks.scratch import default_dsn, describe_server, scratch_database
from sagaz.config import SagaConfig
from sagaz.engine.context import SagaContext
from sagaz.engine.definition import Saga
from sagaz.engine.listeners import SagaListener
from sagaz.ha.pgbouncer import WRITE_POOL, Backend, PgBouncer
from sagaz.storage.postgresql import PostgreSQLSagaStorage
from sagaz.tls import ensure_certificates

__all__ = ["PathResult", "PostgresBenchmark", "format_report", "main", "run_postgres_benchmark"]


@dataclass
class PathResult:
    """One connection path (direct, or through PgBouncer)."""

    label: str
    rates: list[float] = field(default_factory=list)
    """Sagas per second of each throughput run."""
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    achieved_rates: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def p50(self) -> float:
        return statistics.median(self.p50_ms)

    @property
    def p99(self) -> float:
        return statistics.median(self.p99_ms)


@dataclass
class PostgresBenchmark:
    server: str
    sagas: int
    concurrency: int
    offered_rate: float
    latency_seconds: float
    paths: list[PathResult]
    rows_per_saga: float
    bytes_per_saga: float
    wal_bytes_per_saga: float
    audit_rows_per_saga: float = 0.0
    audit_bytes_per_saga: float = 0.0


async def _noop(ctx: SagaContext) -> None:
    return None


def _saga(storage: PostgreSQLSagaStorage, listeners: Sequence[SagaListener] = ()) -> Saga:
    saga = Saga(name="bench-pg", config=SagaConfig(storage=storage, listeners=list(listeners)))
    for i in range(3):
        saga.add_step(f"s{i}", _noop)
    return saga


async def _throughput(dsn: str, sagas: int, concurrency: int,
                      listeners: Sequence[SagaListener] = ()) -> float:
    storage = PostgreSQLSagaStorage(dsn, auto_migrate=False)
    saga = _saga(storage, listeners)
    try:
        await saga.run({})  # connections open, plans warm
        return await closed_loop_rate(saga, sagas, concurrency)
    finally:
        await storage.close()


async def _latency(dsn: str, rate: float, seconds: float,
                   listeners: Sequence[SagaListener] = ()) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, achieved sagas/s) of run() at ``rate`` sagas/s offered."""
    storage = PostgreSQLSagaStorage(dsn, auto_migrate=False)
    try:
        latencies, achieved = await open_loop_latency(_saga(storage, listeners), rate, seconds)
    finally:
        await storage.close()
    return percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000, achieved


def _footprint(dsn: str) -> tuple[int, int, int, int, int]:
    """(sagas, state rows, bytes of saga_executions and saga_steps, audit rows, audit bytes)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM saga_steps")
        row = conn.execute(
            "SELECT (SELECT count(*) FROM saga_executions),"
            "       (SELECT count(*) FROM saga_steps),"
            "       (SELECT coalesce(sum(total_bytes), 0) FROM get_partition_statistics()"
            "         WHERE table_name = 'saga_executions')"
            "       + pg_total_relation_size('saga_steps'),"
            "       (SELECT count(*) FROM saga_audit_log),"
            "       (SELECT coalesce(sum(total_bytes), 0) FROM get_partition_statistics()"
            "         WHERE table_name = 'saga_audit_log')").fetchone()
    assert row is not None
    return int(row[0]), int(row[0]) + int(row[1]), int(row[2]), int(row[3]), int(row[4])


def _wal_lsn(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def _wal_between(dsn: str, before: str, after: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(%s, %s)::bigint", (after, before)).fetchone()
    assert row is not None
    return int(row[0])


def _server_has_tls(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SHOW ssl").fetchone()
    return row is not None and row[0] == "on"


@contextmanager
def _pgbouncer_in_front_of(dsn: str, *, tls: bool = False,
                           server_tls: bool = False) -> Iterator[str]:
    """A PgBouncer (transaction pooling, the write pool's settings) in front of ``dsn``'s
    database; yields the pooled DSN. ``tls``: clients must use TLS (verified, verify-full
    against a CA made for the run); ``server_tls``: TLS to the server too (require: the server's
    CA is not known here)."""
    server = conninfo_to_dict(dsn)
    user = str(server.get("user") or "postgres")
    password = str(server.get("password") or "bench-" + str(time.time_ns()))
    directory = Path(tempfile.mkdtemp(prefix="sagaz-bench-pgbouncer-"))
    directory.chmod(0o755)  # PgBouncer runs as an unprivileged user when we are root
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    files = ensure_certificates(directory / "tls", ["127.0.0.1"]) if tls else None
    client = files.client_params() if files else {"sslmode": "disable"}
    bouncer = PgBouncer(
        directory, port=port,
        backends=[Backend(str(server["dbname"]), str(server.get("host") or "127.0.0.1"),
                          int(server.get("port") or 5432), str(server["dbname"]))],
        passwords={user: password}, admin_user=user, settings=WRITE_POOL, tls=files,
        server_tls_sslmode="require" if server_tls else "disable")
    bouncer.start()
    try:
        yield make_conninfo(dsn, host="127.0.0.1", port=port, password=password, **client)
    finally:
        bouncer.stop(signal.SIGTERM)
        shutil.rmtree(directory, ignore_errors=True)


def run_postgres_benchmark(
    dsn: str | None = None, *, sagas: int = 10_000, concurrency: int = 256, runs: int = 3,
    rate: float = 1_000.0, latency_seconds: float = 10.0, pgbouncer: bool = True,
    tls: bool = True,
) -> PostgresBenchmark:
    base = dsn or default_dsn()
    concurrency = min(concurrency, sagas)
    with scratch_database(base, migrated=True) as db:
        plain = make_conninfo(db, sslmode="disable")
        paths = [PathResult("direct")]
        before = _wal_lsn(plain)
        paths[0].rates += [asyncio.run(_throughput(plain, sagas, concurrency))
                           for _ in range(runs)]
        wal = _wal_between(plain, before, _wal_lsn(plain))
        count, rows, size, audit_rows, audit_size = _footprint(plain)
        _measure_latency(paths[0], plain, runs, rate, latency_seconds)
        server_tls = tls and _server_has_tls(plain)
        if server_tls:
            paths.append(_measure(PathResult("direct, TLS"), _with_tls(db), runs, sagas,
                                  concurrency, rate, latency_seconds))
        variants = [False, True] if tls else [False]
        for client_tls in variants if pgbouncer else []:
            label = "PgBouncer (transaction mode)" + (
                "" if not client_tls else ", TLS" if server_tls else ", TLS to clients only")
            with _pgbouncer_in_front_of(db, tls=client_tls,
                                        server_tls=client_tls and server_tls) as via:
                paths.append(_measure(PathResult(label), via, runs, sagas, concurrency, rate,
                                      latency_seconds))
    return PostgresBenchmark(
        describe_server(base), sagas, concurrency, rate, latency_seconds, paths,
        rows / count, size / count, wal / count, audit_rows / count, audit_size / count)


def _with_tls(dsn: str) -> str:
    """``dsn`` over TLS: as it says when it verifies the server already, else sslmode=require."""
    if conninfo_to_dict(dsn).get("sslmode") in ("require", "verify-ca", "verify-full"):
        return dsn
    return make_conninfo(dsn, sslmode="require")


def _measure(path: PathResult, dsn: str, runs: int, sagas: int, concurrency: int, rate: float,
             latency_seconds: float) -> PathResult:
    path.rates += [asyncio.run(_throughput(dsn, sagas, concurrency)) for _ in range(runs)]
    _measure_latency(path, dsn, runs, rate, latency_seconds)
    return path


def _measure_latency(path: PathResult, dsn: str, runs: int, rate: float,
                     latency_seconds: float) -> None:
    for _ in range(runs):
        p50, p99, achieved = asyncio.run(_latency(dsn, rate, latency_seconds))
        path.p50_ms.append(p50)
        path.p99_ms.append(p99)
        path.achieved_rates.append(achieved)


def format_report(result: PostgresBenchmark) -> str:
    lines = [
        f"PostgreSQL write path: 3-step no-op sagas, every transition durable; server "
        f"{result.server}",
        f"  throughput: {result.sagas:,} sagas over {result.concurrency} coroutines; latency: "
        f"{result.offered_rate:,.0f} sagas/s offered for {result.latency_seconds:g} s",
    ]
    for path in result.paths:
        runs = ", ".join(f"{r:,.0f}" for r in path.rates)
        lines.append(
            f"  {path.label:<36} {path.rate:8,.0f} sagas/s (median of {len(path.rates)}: {runs})"
            f"; run() p50 {path.p50:.1f} ms, p99 {path.p99:.1f} ms "
            f"(p99 runs: {', '.join(f'{p:.1f}' for p in path.p99_ms)}; achieved "
            f"{statistics.median(path.achieved_rates):,.0f}/s)")
    lines.append(
        f"  per saga: {result.rows_per_saga:.1f} state rows (1 saga + 3 steps), "
        f"{result.bytes_per_saga:,.0f} table+index bytes, {result.wal_bytes_per_saga:,.0f} WAL "
        f"bytes (with the audit log: {result.audit_rows_per_saga:.1f} rows, "
        f"{result.audit_bytes_per_saga:,.0f} table+index bytes)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="server to create the scratch database on")
    parser.add_argument("--sagas", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1_000.0)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--no-pgbouncer", action="store_true")
    parser.add_argument("--no-tls", action="store_true")
    args = parser.parse_args(argv)
    result = run_postgres_benchmark(
        args.dsn, sagas=args.sagas, concurrency=args.concurrency, runs=args.runs,
        rate=args.rate, latency_seconds=args.latency_seconds, pgbouncer=not args.no_pgbouncer,
        tls=not args.no_tls)
    print(format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
