"""``sagaz db``: administer the PostgreSQL database: migrate, maintain partitions, show partition
statistics, clean up the consumer inbox. The operations live in
:mod:`sagaz.storage.postgresql.maintenance` (imported only here, when a command runs: psycopg is an
optional extra); this module resolves the DSN and prints."""

from __future__ import annotations

import importlib.util
import os
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.filesize import decimal
from rich.table import Table

from .common import ExitCode, execute, fail
from .output import escape, out, print_error, print_warning, table_console

if TYPE_CHECKING:
    from sagaz.storage.postgresql.maintenance import PartitionStatistics

__all__ = ["db_app", "require_postgres", "resolve_dsn"]

DB_HELP = """\
Administer the PostgreSQL database of sagaz: apply the schema (`migrate`), create and drop the
time partitions (`maintain`), inspect them (`partitions`), delete old consumer-inbox rows
(`cleanup-inbox`).

The database is --dsn, else SAGAZ_DATABASE_URL, else SAGAZ_STORAGE_URL when that is a
postgresql:// URL. Give a **direct connection to the primary, not PgBouncer**: migrations are
multi-statement DDL scripts that a transaction-mode pool cannot carry, and maintenance should not
occupy a pooled server connection while it waits for table locks.

**Scheduling.** `sagaz worker` on a PostgreSQL storage runs `maintain` and `cleanup-inbox` itself
when it starts and then daily (--maintenance-interval). Without such a worker, run
`sagaz db maintain` from cron, or let the database schedule it with the pg_cron extension:

```
SELECT cron.schedule('sagaz-maintenance-outbox', '15 3 * * *',
                     'SELECT count(*) FROM maintain_all_partitions(''saga_outbox'')');
```

and the same for saga_executions and saga_audit_log: one table per job (one transaction each),
so the job never holds two tables' locks while sagas commit.
"""

db_app = typer.Typer(name="db", no_args_is_help=True, help=DB_HELP, rich_markup_mode="markdown")

DsnOption = Annotated[str | None, typer.Option(
    "--dsn", envvar="SAGAZ_DATABASE_URL", metavar="URL", show_default=False,
    help="PostgreSQL database, e.g. postgresql://user@host:5432/dbname (or libpq key=value "
         "pairs): a direct connection to the primary, not PgBouncer. Default: SAGAZ_STORAGE_URL "
         "when it is a postgresql:// URL.")]
LockTimeoutOption = Annotated[float, typer.Option(
    "--lock-timeout", min=0.001, envvar="SAGAZ_MAINTENANCE_LOCK_TIMEOUT", metavar="SECONDS",
    help="How long to wait for a table's lock before skipping that table until the next run "
         "(the application keeps writing meanwhile).")]

_POSTGRES_SCHEMES = ("postgresql", "postgres")
_DSN_FORM = "postgresql://user@host:5432/dbname"
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def resolve_dsn(dsn: str | None) -> str:
    """The PostgreSQL DSN a ``sagaz db`` command works on, or a usage error saying what to set."""
    if dsn and dsn.strip():
        require_postgres(dsn.strip(), "--dsn (or SAGAZ_DATABASE_URL)")
        return dsn.strip()
    storage_url = os.environ.get("SAGAZ_STORAGE_URL", "").strip()
    if _scheme(storage_url) in _POSTGRES_SCHEMES:
        return storage_url
    # Name the scheme only: the URL itself may hold a password.
    storage = (f"a {_scheme(storage_url)}:// URL" if _scheme(storage_url)
               else "not a URL" if storage_url else "unset")
    fail(f"no PostgreSQL database given: pass --dsn {_DSN_FORM} or set SAGAZ_DATABASE_URL (a "
         "direct connection to the primary, not PgBouncer); SAGAZ_STORAGE_URL is used when it is "
         f"a postgresql:// URL, but it is {storage}")


def _scheme(url: str) -> str:
    # Not urlsplit: it raises on an unbalanced "[" in the host, and only the scheme matters here
    # (libpq parses the rest and says what is wrong with it).
    match = _SCHEME.match(url)
    return match[1].lower() if match else ""


def require_postgres(dsn: str, source: str) -> None:
    # A value without "://" is taken as libpq key=value pairs; psycopg validates it.
    scheme = _scheme(dsn)
    if "://" in dsn and scheme not in _POSTGRES_SCHEMES:
        fail(f"{source} is a {scheme or 'scheme-less'}:// URL, not PostgreSQL: database "
             f"administration needs {_DSN_FORM}")


def _require_driver() -> None:
    if importlib.util.find_spec("psycopg") is None:
        fail("PostgreSQL support is not installed (psycopg is missing); install it with: "
             "pip install 'sagaz[postgres]'")


@db_app.command("migrate")
def migrate_command(dsn: DsnOption = None) -> None:
    """Apply the pending schema migrations (tables, partitions, maintenance functions). Safe to
    repeat and to run from several processes at once: each migration is applied exactly once."""

    def body() -> int:
        url = resolve_dsn(dsn)
        _require_driver()
        from sagaz.storage.postgresql import maintenance as pg
        from sagaz.storage.sql import migrations

        where = escape(pg.server_label(url))
        applied = pg.migrate_database(url)
        shipped = {m.version: m for m in migrations("postgresql")}
        latest = shipped[max(shipped)]
        for version in applied:
            out.print(f"applied migration {version:04d}_{escape(shipped[version].name)}")
        if applied:
            out.print(f"{where} is now at schema version {latest.version}", soft_wrap=True)
        else:
            out.print(f"{where} is up to date (schema version {latest.version}, "
                      f"{latest.version:04d}_{escape(latest.name)}); nothing to apply",
                      soft_wrap=True)
        return ExitCode.OK

    execute(body)


@db_app.command("maintain")
def maintain_command(
    table: Annotated[str | None, typer.Option(
        "--table", envvar="SAGAZ_MAINTAIN_TABLE", metavar="TABLE", show_default=False,
        help="Only this table (saga_executions, saga_outbox or saga_audit_log). Default: all, "
             "each in its own transaction.")] = None,
    lock_timeout: LockTimeoutOption = 5.0,
    dsn: DsnOption = None,
) -> None:
    """Maintain the partitioned tables: move rows out of the DEFAULT partitions, create the
    current and upcoming partitions, refresh statistics, drop partitions past retention (the
    settings are rows of sagaz_partition_settings). Idempotent; exit 3 if a table was skipped."""

    def body() -> int:
        url = resolve_dsn(dsn)
        _require_driver()
        from sagaz.storage.postgresql import maintenance as pg

        report = pg.maintain_partitions(url, table, lock_timeout=lock_timeout)
        grid = Table(title=f"maintenance of {escape(pg.server_label(url))}",
                     title_justify="left")
        for column in ("table", "action", "partition", "detail"):
            grid.add_column(column)
        for action in report.actions:
            style = {"moved": "yellow", "dropped": "yellow", "kept": "red"}.get(action.action)
            grid.add_row(action.table_name, action.action, escape(action.partition_name or "-"),
                         escape(action.detail or ""), style=style)
        if report.actions:
            table_console().print(grid)
        out.print(f"{report.count('created')} created, {report.count('moved')} moved out of "
                  f"DEFAULT, {report.count('dropped')} dropped, {report.count('kept')} kept past "
                  "retention (live sagas or undelivered events)")
        for name, why in report.failures.items():
            print_error(f"{name} was skipped: {why}; nothing was changed in it. Run again later, "
                        "or raise --lock-timeout")
        return ExitCode.STORAGE if report.failures else ExitCode.OK

    execute(body)


@db_app.command("partitions")
def partitions_command(
    exact: Annotated[bool, typer.Option(
        "--exact", envvar="SAGAZ_PARTITIONS_EXACT",
        help="Count the rows of every partition (a full scan of each). Default: the planner's "
             "estimate, exact only for DEFAULT partitions.")] = False,
    dsn: DsnOption = None,
) -> None:
    """Show every partition of the partitioned tables: range (UTC), rows and size. Rows in a
    DEFAULT partition are flagged: maintenance should have moved them into dated partitions."""

    def body() -> int:
        url = resolve_dsn(dsn)
        _require_driver()
        from sagaz.storage.postgresql import maintenance as pg

        stats = pg.partition_statistics(url, exact=exact)
        _print_partitions(pg.server_label(url), stats, exact)
        return ExitCode.OK

    execute(body)


@db_app.command("cleanup-inbox")
def cleanup_inbox_command(
    days: Annotated[int, typer.Option(
        "--days", min=0, max=36500, envvar="SAGAZ_INBOX_RETENTION_DAYS", metavar="DAYS",
        help="Delete consumer_inbox rows processed more than DAYS ago. Keep it longer than any "
             "broker redelivery window, or a redelivered event is processed twice.")] = 90,
    dsn: DsnOption = None,
) -> None:
    """Delete old rows of the consumer inbox (the table that deduplicates consumed events)."""

    def body() -> int:
        url = resolve_dsn(dsn)
        _require_driver()
        from sagaz.storage.postgresql import maintenance as pg

        deleted = pg.cleanup_inbox(url, days)
        out.print(f"deleted {deleted} consumer_inbox row(s) processed more than {days} day(s) "
                  f"ago on {escape(pg.server_label(url))}", soft_wrap=True)
        return ExitCode.OK

    execute(body)


def _print_partitions(where: str, stats: list[PartitionStatistics], exact: bool) -> None:
    grid = Table(title=f"partitions of {escape(where)}", title_justify="left")
    grid.add_column("table", no_wrap=True)
    grid.add_column("partition", no_wrap=True)
    grid.add_column("range (UTC)", no_wrap=True)
    grid.add_column("rows" if exact else "rows (est.)", justify="right")
    grid.add_column("size", justify="right")
    stuck: list[PartitionStatistics] = []
    for p in stats:
        style = None
        if p.is_default and p.row_count > 0:
            stuck.append(p)
            style = "bold yellow"
        grid.add_row(p.table_name, p.partition_name, _range(p), f"{p.row_count:,}",
                     decimal(p.total_bytes), style=style)
    table_console().print(grid)
    tables = len({p.table_name for p in stats})
    out.print(f"total: {tables} table(s), {len(stats)} partition(s), "
              f"{sum(p.row_count for p in stats):,} row(s), "
              f"{decimal(sum(p.total_bytes for p in stats))}")
    for p in stuck:
        print_warning(f"{p.partition_name} holds {p.row_count:,} row(s) that belong in dated "
                      "partitions: run `sagaz db maintain` (is the worker's scheduled "
                      "maintenance running?)")


def _range(p: PartitionStatistics) -> str:
    if p.is_default:
        return "DEFAULT"
    return f"{_bound(p.range_start, 'MINVALUE')} .. {_bound(p.range_end, 'MAXVALUE')}"


def _bound(moment: datetime | None, unbounded: str) -> str:
    if moment is None:
        return unbounded
    utc = moment.astimezone(UTC)
    # Partitions sagaz makes start at UTC midnight: the date alone says it all.
    if utc.hour == utc.minute == utc.second == utc.microsecond == 0:
        return utc.strftime("%Y-%m-%d")
    return utc.strftime("%Y-%m-%d %H:%M:%S")
