"""``sagaz benchmark``: the measurements behind the performance claims, runnable anywhere.

Each subcommand runs one module of :mod:`sagaz.benchmarks` and prints its report (medians of
several runs). The PostgreSQL ones create a scratch database on the given server and drop it
afterwards; they need a role allowed to CREATE DATABASE.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from .common import ExitCode, execute, fail
from .output import out

__all__ = ["benchmark_app"]

HELP = """\
Measure sagaz on this machine. Quote medians, never a single run; the numbers depend on the
machine, so run them where you deploy.

* `engine`: engine overhead on in-memory storage (no database).
* `postgres`: the PostgreSQL write path: throughput, run() latency at a fixed offered rate, rows,
  bytes and WAL per saga; direct and through a PgBouncer it starts (transaction mode).
* `replication`: replication lag (commit to replayed on a replica) under a saga load, on a local
  cluster (primary, replica, PgBouncer) it starts in a temporary directory and removes.
* `backup`: on a temporary local cluster with pgBackRest (filled to --size-mb), restore
  throughput against a plain `cp -a` of the data directory, and run() latency through
  pgbouncer-rw with WAL archiving on and off, side by side (about 3 minutes at 1 GiB).
* `outbox`: the outbox end to end per broker (relay throughput, commit-to-broker-ack latency at
  5,000 events/s with LISTEN/NOTIFY) and the consumer inbox; needs the brokers on loopback.
* `brokers`: raw publish throughput of each broker client, without the database.
* `report`: all of the above in one run, written as report.md with PNG charts and the design
  summary's checklist as pass/fail lines (`--profile quick`: under 3 minutes).
* `partitioning`: one-month queries on monthly partitions against an unpartitioned copy, and
  retention by DROP against DELETE (5M rows by default: about 2 minutes).

The PostgreSQL benchmarks use --dsn, else SAGAZ_BENCH_PG_DSN, else SAGAZ_TEST_PG_DSN, else
postgresql://postgres@127.0.0.1:5432/postgres.
"""

benchmark_app = typer.Typer(name="benchmark", no_args_is_help=True, help=HELP,
                            rich_markup_mode="markdown")

DsnOption = Annotated[str | None, typer.Option(
    "--dsn", envvar="SAGAZ_BENCH_PG_DSN", metavar="URL", show_default=False,
    help="Server to create the scratch database on (a role with CREATEDB).")]
RunsOption = Annotated[int, typer.Option("--runs", min=1, max=50, help="Runs per measurement.")]


@benchmark_app.command()
def engine(
    sagas: Annotated[int, typer.Option("--sagas", min=100, help="Sagas per run.")] = 20_000,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1)] = 100,
    runs: RunsOption = 3,
) -> None:
    """Engine overhead: 3-step no-op sagas on the in-memory storage."""

    def body() -> int:
        from sagaz.benchmarks.engine import run_engine_benchmark

        result = run_engine_benchmark(sagas=sagas, concurrency=concurrency, runs=runs)
        out.print(
            f"engine: {result.sagas_per_second:,.0f} sagas/s (median of {len(result.runs)}: "
            f"{', '.join(f'{r:,.0f}' for r in result.runs)}); {result.us_per_step:.1f} us/step; "
            f"marginal {result.marginal_us_per_step:.1f} us/step", soft_wrap=True)
        return ExitCode.OK

    execute(body)


@benchmark_app.command()
def postgres(
    dsn: DsnOption = None,
    sagas: Annotated[int, typer.Option("--sagas", min=10, help="Sagas per throughput run.")]
    = 10_000,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1)] = 256,
    runs: RunsOption = 3,
    rate: Annotated[float, typer.Option(
        "--rate", min=1, help="Offered load of the latency runs, sagas/s.")] = 1_000.0,
    latency_seconds: Annotated[float, typer.Option(
        "--latency-seconds", min=0.1, help="Length of each latency run.")] = 10.0,
    pgbouncer: Annotated[bool, typer.Option(
        "--pgbouncer/--no-pgbouncer",
        help="Also measure through a PgBouncer (transaction mode) started for the run.")] = True,
    tls: Annotated[bool, typer.Option(
        "--tls/--no-tls",
        help="Also measure each path over TLS (direct: when the server has ssl on; PgBouncer: "
             "TLS to its clients, and to the server when it offers it), side by side.")] = True,
) -> None:
    """The PostgreSQL write path, direct and through PgBouncer, without and with TLS."""

    def body() -> int:
        from sagaz.benchmarks.postgres import format_report, run_postgres_benchmark

        result = run_postgres_benchmark(
            dsn, sagas=sagas, concurrency=concurrency, runs=runs, rate=rate,
            latency_seconds=latency_seconds, pgbouncer=pgbouncer, tls=tls)
        out.print(format_report(result), soft_wrap=True, highlight=False)
        return ExitCode.OK

    _with_psycopg(body)


@benchmark_app.command()
def partitioning(
    dsn: DsnOption = None,
    rows: Annotated[int, typer.Option(
        "--rows", min=130_000, envvar="SAGAZ_BENCH_PARTITION_ROWS",
        help="saga_executions rows, spread over 13 months.")] = 5_000_000,
    runs: RunsOption = 5,
) -> None:
    """Monthly partitions against an unpartitioned copy: queries and retention."""

    def body() -> int:
        from sagaz.benchmarks.partitioning import format_report, run_partitioning_benchmark

        result = run_partitioning_benchmark(dsn, rows=rows, runs=runs)
        out.print(format_report(result), soft_wrap=True, highlight=False)
        return ExitCode.OK

    _with_psycopg(body)


@benchmark_app.command()
def replication(
    rate: Annotated[float, typer.Option("--rate", min=1, help="Offered sagas/s.")] = 1_000.0,
    seconds: Annotated[float, typer.Option("--seconds", min=1)] = 10.0,
    base_port: Annotated[int, typer.Option(
        "--base-port", min=1024, max=64000, help="Ports of the temporary cluster.")] = 45432,
) -> None:
    """Replication lag under load on a temporary local cluster."""

    def body() -> int:
        from sagaz.benchmarks.replication import format_report, run_replication_benchmark

        result = run_replication_benchmark(rate, seconds, base_port)
        out.print(format_report(result), soft_wrap=True, highlight=False)
        return ExitCode.OK

    _with_psycopg(body)


@benchmark_app.command()
def backup(
    # Checked by check_arguments (one line, exit 2), not by click's range checks (a box).
    size_mb: Annotated[int, typer.Option(
        "--size-mb", help="Fill the database to this many MiB (at least 16) before the full "
                          "backup.")] = 1024,
    runs: Annotated[int, typer.Option("--runs", help="Runs per measurement (1 to 50).")] = 3,
    rate: Annotated[float, typer.Option(
        "--rate", help="Offered sagas/s of the write-path runs.")] = 1_000.0,
    seconds: Annotated[float, typer.Option(
        "--seconds", help="Length of each write-path run (at least 1).")] = 10.0,
    base_port: Annotated[int, typer.Option(
        "--base-port", help="Ports of the temporary cluster (it takes this one and the next "
                            "1001).")] = 46432,
) -> None:
    """Restore throughput against cp -a, and the write path with archiving on and off."""

    def body() -> int:
        from sagaz.benchmarks.backup import (
            check_arguments,
            format_report,
            require_binaries,
            run_backup_benchmark,
        )

        from .dev import cluster_errors, stage_printer

        check_arguments(size_mb, runs, rate, seconds, base_port)
        require_binaries()  # before anything is created: what to install, in one line
        with cluster_errors(), stage_printer(
                f"benchmark backup: {size_mb} MiB, {runs} runs") as stage:
            result = run_backup_benchmark(size_mb, runs, rate, seconds, base_port,
                                          progress=stage)
        out.print(format_report(result), soft_wrap=True, highlight=False)
        return ExitCode.OK

    _with_psycopg(body)


@benchmark_app.command()
def outbox(
    dsn: DsnOption = None,
    broker: Annotated[list[str] | None, typer.Option(
        "--broker", help="redis, nats or rabbitmq (repeatable; default: all three).")] = None,
    events: Annotated[int, typer.Option("--events", min=100)] = 20_000,
    runs: RunsOption = 3,
    rate: Annotated[float, typer.Option("--rate", min=1)] = 5_000.0,
) -> None:
    """The outbox relay per broker, and the consumer inbox."""

    def body() -> int:
        from sagaz.benchmarks.outbox import BROKERS, format_report, run_outbox_benchmark

        unknown = sorted(set(broker or ()) - set(BROKERS))
        if unknown:
            fail(f"unknown broker(s) {unknown}; choose from {sorted(BROKERS)}")
        result = run_outbox_benchmark(dsn, brokers=broker or tuple(BROKERS), events=events,
                                      runs=runs, rate=rate)
        out.print(format_report(result), soft_wrap=True, highlight=False)
        return ExitCode.OK

    _with_psycopg(body)


@benchmark_app.command()
def brokers(
    events: Annotated[int, typer.Option("--events", min=100)] = 20_000,
    runs: RunsOption = 3,
) -> None:
    """Raw publish throughput of each broker client (batches of 100 and 500)."""

    def body() -> int:
        from sagaz.benchmarks.brokers import format_report, run_broker_benchmark

        out.print(format_report(run_broker_benchmark(events=events, runs=runs)),
                  soft_wrap=True, highlight=False)
        return ExitCode.OK

    execute(body)


def _with_psycopg(body: Callable[[], int]) -> None:
    def guarded() -> int:
        try:
            import psycopg
        except ImportError:
            fail("the PostgreSQL benchmarks need psycopg: pip install 'sagaz[postgres]'")
        try:
            code: int = body()
        except psycopg.ProgrammingError as exc:
            if type(exc) is not psycopg.ProgrammingError or exc.sqlstate is not None:
                raise  # an error of the server (a subclass, with a SQLSTATE): a bug, not input
            # A conninfo libpq cannot parse; its message quotes the malformed part, which may
            # hold the password.
            fail("--dsn (SAGAZ_BENCH_PG_DSN) is malformed; expected "
                 "postgresql://user@host:5432/dbname or key=value pairs such as "
                 "'host=127.0.0.1 dbname=postgres'")
        except psycopg.OperationalError as exc:
            fail(f"cannot reach the benchmark server: {str(exc).strip()}", ExitCode.STORAGE)
        return code

    execute(guarded)
