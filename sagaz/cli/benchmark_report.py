"""``sagaz benchmark report``: every benchmark in one run, written as report.md with charts."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .benchmark import DsnOption, _with_psycopg
from .common import ExitCode, fail
from .output import out

__all__ = ["report_command"]


class ReportProfile(StrEnum):
    QUICK = "quick"
    FULL = "full"


def report_command(
    profile: Annotated[ReportProfile, typer.Option(
        "--profile", envvar="SAGAZ_BENCH_PROFILE", case_sensitive=False,
        help="quick: one run of each measurement, small sizes, under 3 minutes on 2 cores. "
             "full: medians of 3 runs at larger sizes (1M partition rows, 10,000 sagas a "
             "run): several times as long.")] = ReportProfile.QUICK,
    out_dir: Annotated[Path, typer.Option(
        "--out", envvar="SAGAZ_BENCH_REPORT_DIR", metavar="DIR",
        help="Directory for report.md and the PNG charts (created; files in it are "
             "replaced).")] = Path("sagaz-report"),
    dsn: DsnOption = None,
    broker: Annotated[list[str] | None, typer.Option(
        "--broker", envvar="SAGAZ_BENCH_BROKERS",
        help="redis, nats or rabbitmq (repeatable; the variable takes a space-separated list; "
             "default: all three, on loopback).")] = None,
    dashboards: Annotated[bool, typer.Option(
        "--dashboards/--no-dashboards", envvar="SAGAZ_BENCH_DASHBOARDS",
        help="Draw the deployments' Grafana dashboards from their PromQL, evaluated by a "
             "Prometheus that scrapes sagaz's metrics and the exporters during the cluster "
             "stage (needs prometheus, prometheus-postgres-exporter and "
             "prometheus-pgbouncer-exporter).")] = True,
) -> None:
    """Measure this machine and write a report: saga throughput and latency (embedded SQLite,
    PostgreSQL direct, through PgBouncer, through a temporary local cluster's pgbouncer-rw),
    the outbox relay per broker and commit-to-publish latency, partition pruning and DROP
    against DELETE, replication lag under load, replica query latency, connection cost with
    and without PgBouncer, and the database's physical limits measured in the same run (the
    single-row commit rate, and a replay of the SQL the storage sends). The design summary's
    checklist targets appear as pass/fail lines with the measured value.

    The temporary cluster (primary, replica, two PgBouncers) runs on free loopback ports and is
    removed at the end. Needs the brokers on loopback and a PostgreSQL role that may CREATE
    DATABASE (--dsn)."""

    def body() -> int:
        from sagaz.benchmarks.outbox import BROKERS

        unknown = sorted(set(broker or ()) - set(BROKERS))
        if unknown:
            fail(f"unknown broker(s) {unknown}; choose from {sorted(BROKERS)}")
        if out_dir.exists() and not out_dir.is_dir():
            fail(f"--out {out_dir} is a file; give a directory for report.md and its charts")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            fail("the report's charts need matplotlib: pip install 'sagaz[report]'")
        from sagaz.benchmarks.report import PROFILES, STAGES, run_report
        from sagaz.benchmarks.report_md import targets, write_report
        from sagaz.ha.postgres import find_bindir

        find_bindir()  # the temporary cluster's binaries: what to install, before any work
        if dashboards:
            from sagaz.errors import ConfigurationError
            from sagaz.ha.monitoring import find_monitoring_binaries

            try:
                find_monitoring_binaries()
            except ConfigurationError as exc:
                fail(f"{str(exc).split(' or leave out')[0]}, or pass --no-dashboards")
        chosen = PROFILES[profile.value]
        started = time.monotonic()
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())
        with Progress(*columns, console=out, transient=not out.is_terminal) as bar:
            task = bar.add_task(f"benchmark report ({chosen.name})", total=len(STAGES))

            def progress(stage: str) -> None:
                done = STAGES.index(stage)
                bar.update(task, completed=done, description=escape(stage))
                if not out.is_terminal:
                    out.print(f"  [{done + 1}/{len(STAGES)}] {escape(stage)}", soft_wrap=True)

            run = run_report(chosen, dsn, brokers=tuple(broker or BROKERS),
                             monitoring=dashboards, progress=progress)
            bar.update(task, completed=len(STAGES), description="writing report.md and charts")
            path = write_report(run, out_dir, datetime.now(UTC))
        for target in targets(run):
            out.print(("[green]PASS[/] " if target.passed else "[red]FAIL[/] ")
                      + escape(f"{target.claim}: {target.measured}"), soft_wrap=True)
        out.print(escape(f"wrote {path} in {time.monotonic() - started:,.0f} s"),
                  soft_wrap=True)
        return ExitCode.OK

    _with_psycopg(body)
