"""`sagaz db` and the scheduled maintenance of `sagaz worker`, run as subprocesses against a fresh
PostgreSQL database per test (fixtures in tests/pg_fixtures.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from pg_fixtures import as_url
from process_output import stdout_lines

from sagaz.storage.sql import migrations

SECRET = "s3cr3t-Pa55word"
UNREACHABLE = f"postgresql://sagaz:{SECRET}@127.0.0.1:1/app"
MANAGED = ("saga_audit_log", "saga_executions", "saga_outbox")
SHIPPED = len(migrations("postgresql"))


def _env(**extra: str) -> dict[str, str]:
    # Only the SAGAZ_* variables a test sets: the developer's own must not leak in. Wide columns:
    # tables and help text stay unwrapped, so lines can be searched.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAZ_")}
    env.update(PYTHONUNBUFFERED="1", COLUMNS="200")
    env.update(extra)
    return env


def cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sagaz", *args], cwd=cwd, env=_env(**env),
                          capture_output=True, text=True, timeout=60, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


def assert_clean_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in result.stderr, result.stderr


def scalar(dsn: str, query: str, *params: object) -> object:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def execute(dsn: str, query: str, *params: object) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(query, params)


def partitions(dsn: str, table: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass ORDER BY 1", (table,)).fetchall()
    return [r[0] for r in rows]


def next_month_partition(dsn: str) -> str:
    name = scalar(dsn, "SELECT to_char(date_trunc('month', now() AT TIME ZONE 'UTC') "
                       "+ interval '1 month', '\"saga_executions_p\"YYYY_MM')")
    assert isinstance(name, str)
    return name


# -- help and configuration errors ----------------------------------------------------------------


def test_db_help_explains_direct_connections_and_pg_cron(tmp_path: Path) -> None:
    assert " db " in ok(cli(tmp_path, "--help"))
    out = ok(cli(tmp_path, "db", "--help"))
    for command in ("migrate", "maintain", "partitions", "cleanup-inbox"):
        assert f" {command} " in out, command
    assert "not PgBouncer" in out
    assert "SAGAZ_DATABASE_URL" in out
    assert "pg_cron" in out
    assert "cron.schedule('sagaz-maintenance-outbox', '15 3 * * *'" in out
    assert "SELECT count(*) FROM maintain_all_partitions(''saga_outbox'')" in out
    assert "one table per job" in " ".join(out.split())
    assert "SAGAZ_DATABASE_URL" in ok(cli(tmp_path, "db", "maintain", "--help"))
    worker_help = ok(cli(tmp_path, "worker", "--help"))
    for variable in ("SAGAZ_MAINTENANCE_INTERVAL", "SAGAZ_INBOX_RETENTION_DAYS"):
        assert variable in worker_help


@pytest.mark.parametrize("command", ["migrate", "maintain", "partitions", "cleanup-inbox"])
def test_a_missing_dsn_says_what_to_set_and_exits_2(tmp_path: Path, command: str) -> None:
    assert_clean_error(cli(tmp_path, "db", command), 2, "--dsn", "SAGAZ_DATABASE_URL",
                       "SAGAZ_STORAGE_URL")


def test_a_non_postgresql_url_is_refused_with_exit_2(tmp_path: Path) -> None:
    # SAGAZ_STORAGE_URL is only a fallback when it names PostgreSQL.
    assert_clean_error(cli(tmp_path, "db", "migrate", SAGAZ_STORAGE_URL="sqlite:///state.db"),
                       2, "SAGAZ_DATABASE_URL", "sqlite://")
    assert_clean_error(cli(tmp_path, "db", "partitions", "--dsn", "sqlite:///state.db"),
                       2, "not PostgreSQL", "postgresql://")
    assert_clean_error(cli(tmp_path, "db", "maintain", SAGAZ_DATABASE_URL="redis://h:6379/0"),
                       2, "redis://")
    assert not (tmp_path / "state.db").exists()


@pytest.mark.parametrize("command", ["migrate", "maintain", "partitions", "cleanup-inbox"])
def test_an_unreachable_server_exits_3_naming_it_without_the_password(
    tmp_path: Path, command: str
) -> None:
    result = cli(tmp_path, "--log-level", "DEBUG", "db", command, "--dsn", UNREACHABLE)
    assert_clean_error(result, 3, "127.0.0.1:1", "cannot connect")
    assert SECRET not in result.stdout + result.stderr


def test_cleanup_inbox_refuses_negative_days_with_exit_2(tmp_path: Path) -> None:
    result = cli(tmp_path, "db", "cleanup-inbox", "--days", "-1", "--dsn", UNREACHABLE)
    assert_clean_error(result, 2, "--days")
    result = cli(tmp_path, "db", "cleanup-inbox", SAGAZ_INBOX_RETENTION_DAYS="-5",
                 SAGAZ_DATABASE_URL=UNREACHABLE)
    assert_clean_error(result, 2, "SAGAZ_INBOX_RETENTION_DAYS")


# -- against a database ---------------------------------------------------------------------------


def test_migrate_applies_the_schema_once_then_has_nothing_to_do(
    tmp_path: Path, pg_empty_dsn: str
) -> None:
    url = as_url(pg_empty_dsn)
    out = ok(cli(tmp_path, "db", "migrate", "--dsn", url))
    assert "applied migration 0001_saga_tables" in out
    assert "applied migration 0002_partition_maintenance" in out
    assert scalar(pg_empty_dsn, "SELECT count(*) FROM sagaz_migrations") == SHIPPED
    assert all(partitions(pg_empty_dsn, table) for table in MANAGED)
    # Again, from the environment and from another process: a no-op.
    again = ok(cli(tmp_path, "db", "migrate", SAGAZ_DATABASE_URL=url))
    assert "up to date" in again
    assert "nothing to apply" in again
    assert "applied migration" not in again
    assert scalar(pg_empty_dsn, "SELECT count(*) FROM sagaz_migrations") == SHIPPED


def test_maintain_on_an_empty_database_says_to_migrate_first(
    tmp_path: Path, pg_empty_dsn: str
) -> None:
    result = cli(tmp_path, "db", "maintain", "--dsn", as_url(pg_empty_dsn))
    assert_clean_error(result, 3, "sagaz db migrate")


def test_maintain_moves_rows_out_of_default_and_lists_what_it_did(
    tmp_path: Path, pg_dsn: str
) -> None:
    # 40 days ahead: past the 7 premade daily outbox partitions, so the row lands in DEFAULT.
    execute(pg_dsn, "INSERT INTO saga_outbox (event_id, event_type, created_at) "
                    "VALUES (%s, 'order.created', now() + interval '40 days')", uuid.uuid4())
    expected = scalar(pg_dsn, "SELECT to_char((now() + interval '40 days') AT TIME ZONE 'UTC', "
                              "'\"saga_outbox_p\"YYYY_MM_DD')")
    url = as_url(pg_dsn)
    # The DSN comes from SAGAZ_STORAGE_URL when that is a PostgreSQL URL.
    out = ok(cli(tmp_path, "db", "maintain", SAGAZ_STORAGE_URL=url))
    lines = out.splitlines()
    assert any("saga_outbox" in ln and "created" in ln and str(expected) in ln for ln in lines)
    assert any("moved" in ln and "1 rows from saga_outbox_default" in ln for ln in lines), out
    for table in MANAGED:
        assert any(table in ln and "analyzed" in ln for ln in lines), table
    assert "1 created, 1 moved" in out
    assert scalar(pg_dsn, "SELECT count(*) FROM saga_outbox_default") == 0
    assert scalar(pg_dsn, f"SELECT count(*) FROM {expected}") == 1

    again = ok(cli(tmp_path, "db", "maintain", "--dsn", url, "--table", "saga_outbox"))
    assert "0 created, 0 moved" in again
    assert "saga_executions" not in again
    assert_clean_error(cli(tmp_path, "db", "maintain", "--dsn", url, "--table", "sagas"),
                       2, "saga_executions, saga_outbox")


def test_maintain_skips_a_locked_table_reports_it_and_maintains_the_others(
    tmp_path: Path, pg_dsn: str
) -> None:
    missing = next_month_partition(pg_dsn)
    execute(pg_dsn, f"DROP TABLE {missing}")
    with psycopg.connect(pg_dsn) as holder:
        holder.execute("LOCK TABLE saga_outbox IN ACCESS EXCLUSIVE MODE")
        result = cli(tmp_path, "db", "maintain", "--dsn", as_url(pg_dsn), "--lock-timeout", "0.3")
        holder.rollback()
    assert_clean_error(result, 3, "saga_outbox was skipped", "lock")
    assert missing in result.stdout
    assert missing in partitions(pg_dsn, "saga_executions")


def test_partitions_lists_every_managed_table_and_flags_rows_in_default(
    tmp_path: Path, pg_dsn: str
) -> None:
    execute(pg_dsn, "INSERT INTO saga_audit_log (event, created_at) "
                    "VALUES ('far future', now() + interval '2 years')")
    url = as_url(pg_dsn)
    result = cli(tmp_path, "db", "partitions", "--dsn", url)
    out = ok(result)
    for table in MANAGED:
        for name in partitions(pg_dsn, table):
            assert name in out, name
    default_line = next(ln for ln in out.splitlines() if "saga_audit_log_default" in ln)
    assert "DEFAULT" in default_line
    assert " 1 " in default_line
    assert "total: 3 table(s)" in out
    assert "saga_audit_log_default holds 1 row(s)" in result.stderr
    assert "sagaz db maintain" in result.stderr
    exact = ok(cli(tmp_path, "db", "partitions", SAGAZ_DATABASE_URL=url,
                   SAGAZ_PARTITIONS_EXACT="1"))
    assert "rows (est.)" not in exact
    assert "rows" in exact


def test_partitions_of_a_clean_database_warn_about_nothing(tmp_path: Path, pg_dsn: str) -> None:
    result = cli(tmp_path, "db", "partitions", "--dsn", as_url(pg_dsn))
    ok(result)
    assert "warning" not in result.stderr


def test_cleanup_inbox_deletes_only_rows_older_than_the_retention(
    tmp_path: Path, pg_dsn: str
) -> None:
    for age in (200, 60, 1):
        execute(pg_dsn, "INSERT INTO consumer_inbox (consumer_name, event_id, processed_at) "
                        "VALUES ('billing', %s, now() - make_interval(days => %s))",
                uuid.uuid4(), age)
    url = as_url(pg_dsn)
    out = ok(cli(tmp_path, "db", "cleanup-inbox", "--dsn", url))  # default: 90 days
    assert "deleted 1 consumer_inbox row(s)" in out
    assert scalar(pg_dsn, "SELECT count(*) FROM consumer_inbox") == 2
    out = ok(cli(tmp_path, "db", "cleanup-inbox", "--days", "30", SAGAZ_DATABASE_URL=url))
    assert "deleted 1 consumer_inbox row(s) processed more than 30 day(s) ago" in out
    assert scalar(pg_dsn, "SELECT min(now() - processed_at) < interval '2 days' "
                          "FROM consumer_inbox") is True
    assert scalar(pg_dsn, "SELECT count(*) FROM consumer_inbox") == 1


# -- the worker's scheduled maintenance -----------------------------------------------------------


def test_worker_once_on_postgresql_runs_the_maintenance(tmp_path: Path, pg_dsn: str) -> None:
    missing = next_month_partition(pg_dsn)
    execute(pg_dsn, f"DROP TABLE {missing}")
    execute(pg_dsn, "INSERT INTO consumer_inbox (consumer_name, event_id, processed_at) "
                    "VALUES ('billing', %s, now() - interval '10 days')", uuid.uuid4())
    result = cli(tmp_path, "worker", "--once", SAGAZ_STORAGE_URL=as_url(pg_dsn),
                 SAGAZ_INBOX_RETENTION_DAYS="7")
    out = ok(result)
    assert f"created {missing}" in out
    assert "1 old consumer_inbox row(s) deleted" in out
    assert missing in partitions(pg_dsn, "saga_executions")
    assert scalar(pg_dsn, "SELECT count(*) FROM consumer_inbox") == 0


def test_worker_maintenance_interval_0_disables_it(tmp_path: Path, pg_dsn: str) -> None:
    missing = next_month_partition(pg_dsn)
    execute(pg_dsn, f"DROP TABLE {missing}")
    out = ok(cli(tmp_path, "worker", "--once", "--maintenance-interval", "0",
                 SAGAZ_STORAGE_URL=as_url(pg_dsn)))
    assert "maintenance" not in out
    assert missing not in partitions(pg_dsn, "saga_executions")


def test_a_failing_maintenance_is_a_warning_and_never_stops_recovery(
    tmp_path: Path, pg_dsn: str
) -> None:
    result = cli(tmp_path, "worker", "--once", SAGAZ_STORAGE_URL=as_url(pg_dsn),
                 SAGAZ_DATABASE_URL=UNREACHABLE)
    out = ok(result)
    assert "no saga needed recovery" in out
    assert "database maintenance failed" in result.stderr
    assert "127.0.0.1:1" in result.stderr
    assert SECRET not in out + result.stderr


def test_worker_on_sqlite_does_no_maintenance(tmp_path: Path) -> None:
    result = cli(tmp_path, "worker", "--once", SAGAZ_DATABASE_URL=UNREACHABLE)
    assert "maintenance" not in ok(result) + result.stderr


def test_a_running_worker_maintains_at_start_and_stops_cleanly(
    tmp_path: Path, pg_dsn: str
) -> None:
    missing = next_month_partition(pg_dsn)
    execute(pg_dsn, f"DROP TABLE {missing}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sagaz", "worker", "--interval", "0.2"], cwd=tmp_path,
        env=_env(SAGAZ_STORAGE_URL=as_url(pg_dsn)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    lines = stdout_lines(proc)
    try:
        seen: list[str] = []
        while not any("maintenance:" in ln for ln in seen):
            seen.append(lines.get(timeout=30))
        assert any(f"created {missing}" in ln for ln in seen), seen
        assert "maintenance every 86400s" in seen[0]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert missing in partitions(pg_dsn, "saga_executions")
    assert proc.stderr is not None
    assert "Traceback" not in proc.stderr.read()

