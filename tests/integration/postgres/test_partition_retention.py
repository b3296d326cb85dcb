"""Retention never drops what is alive: sagas still running and events not yet delivered keep their
partition past its retention (rewritten to hold only them), dead letters have their own retention,
and what is finished goes. All as of a reference time, on a real PostgreSQL."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from partition_helpers import (
    Conn,
    add_event,
    add_saga,
    day_name,
    drop_dated_partitions,
    exists,
    maintain,
    month_name,
    months_ago,
    partitions,
    where_rows_are,
)

from sagaz.storage.postgresql.maintenance import maintain_partitions

TODAY = datetime(2027, 3, 15, 8, 30, tzinfo=UTC)
LIVE_SAGA = ("PENDING", "RUNNING", "WAITING", "COMPENSATING")
FINISHED_SAGA = ("COMPLETED", "COMPENSATED", "FAILED")


@pytest.fixture
def conn(pg_conn: Conn) -> Conn:
    drop_dated_partitions(pg_conn)
    maintain(pg_conn, TODAY)
    return pg_conn


def steps_of(conn: Conn) -> set[object]:
    return {row[0] for row in conn.execute("SELECT DISTINCT saga_id FROM saga_steps").fetchall()}


def saga_row(conn: Conn, saga_id: object) -> tuple[object, ...] | None:
    return conn.execute(
        "SELECT saga_id, status, created_at, version, lease_owner FROM saga_executions "
        "WHERE saga_id = %s", (saga_id,)
    ).fetchone()


def test_sagas_still_running_keep_their_partition_and_steps_past_retention(conn: Conn) -> None:
    old = months_ago(TODAY, 14)
    conn.execute("SELECT create_saga_executions_partition(%s)", (old.date(),))
    live = {status: add_saga(conn, old, steps=2, status=status) for status in LIVE_SAGA}
    finished = [add_saga(conn, old, steps=2, status=status) for status in FINISHED_SAGA]
    conn.execute("UPDATE saga_executions SET lease_owner = 'worker-1', version = 7 "
                 "WHERE saga_id = %s", (live["RUNNING"],))
    before = saga_row(conn, live["RUNNING"])
    bounds = dict((name, bound) for _, name, bound in partitions(conn))

    summary = maintain(conn, TODAY)

    name = month_name("saga_executions", old)
    kept = [(a, d) for table, a, n, d in summary if n == name]
    assert kept == [("kept", "4 live rows kept past retention (COMPENSATING 1, PENDING 1, "
                             "RUNNING 1, WAITING 1); the finished rows were dropped, 6 saga_steps "
                             "rows deleted")]
    assert where_rows_are(conn, "saga_executions", "saga_id") == {
        saga_id: name for saga_id in live.values()}
    assert steps_of(conn) == set(live.values())
    assert not set(finished) & set(where_rows_are(conn, "saga_executions", "saga_id"))
    # Same partition name and range; the saga row is unchanged, so the storage's fenced update
    # (saga_id, lease owner, creation time) still finds it.
    assert dict((n, b) for _, n, b in partitions(conn))[name] == bounds[name]
    assert saga_row(conn, live["RUNNING"]) == before
    updated = conn.execute(
        "UPDATE saga_executions SET version = version + 1 WHERE saga_id = %s "
        "AND lease_owner = 'worker-1' AND created_at = %s RETURNING saga_id",
        (live["RUNNING"], old)).fetchall()
    assert updated == [(live["RUNNING"],)]

    # Nothing more to drop while they run: kept again, untouched.
    again = [(a, d) for _, a, n, d in maintain(conn, TODAY) if n == name]
    assert again == [("kept", "4 live rows kept past retention (COMPENSATING 1, PENDING 1, "
                              "RUNNING 1, WAITING 1)")]
    # Once they have finished, the partition goes with their steps.
    conn.execute("UPDATE saga_executions SET status = 'COMPENSATED'")
    final = [(a, d) for _, a, n, d in maintain(conn, TODAY) if n == name]
    assert final == [("dropped", "8 saga_steps rows deleted")]
    assert not exists(conn, name)
    assert steps_of(conn) == set()


def test_unsent_events_are_kept_and_sent_ones_dropped(conn: Conn) -> None:
    old = TODAY - timedelta(days=40)
    conn.execute("SELECT create_saga_outbox_partition(%s)", (old.date(),))
    unsent = {s: add_event(conn, old, status=s) for s in ("PENDING", "FAILED", "CLAIMED")}
    add_event(conn, old, status="SENT")
    dead = add_event(conn, old, status="DEAD_LETTER")  # 40 days old: within its 90 days

    summary = maintain(conn, TODAY, "saga_outbox")

    name = day_name("saga_outbox", old)
    assert [(a, d) for _, a, n, d in summary if n == name] == [
        ("kept", "4 live rows kept past retention (CLAIMED 1, DEAD_LETTER 1, FAILED 1, "
                 "PENDING 1); the finished rows were dropped")]
    assert set(where_rows_are(conn, "saga_outbox", "event_id")) == {*unsent.values(), dead}


def test_dead_letters_go_after_their_own_retention(conn: Conn) -> None:
    old = TODAY - timedelta(days=100)
    conn.execute("SELECT create_saga_outbox_partition(%s)", (old.date(),))
    add_event(conn, old, status="DEAD_LETTER")
    add_event(conn, old, status="SENT")
    name = day_name("saga_outbox", old)

    conn.execute("UPDATE sagaz_partition_settings SET dead_letter_retention = NULL "
                 "WHERE table_name = 'saga_outbox'")
    kept = [a for _, a, n, _ in maintain(conn, TODAY, "saga_outbox") if n == name]
    assert kept == ["kept"]  # NULL: dead letters stay until purged

    conn.execute("UPDATE sagaz_partition_settings SET dead_letter_retention = interval '90 days' "
                 "WHERE table_name = 'saga_outbox'")
    dropped = [a for _, a, n, _ in maintain(conn, TODAY, "saga_outbox") if n == name]
    assert dropped == ["dropped"]
    assert not exists(conn, name)
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE sagaz_partition_settings SET dead_letter_retention = '-1 day'")


def test_the_audit_log_goes_at_its_retention(conn: Conn) -> None:
    old = months_ago(TODAY, 13)
    conn.execute("SELECT create_saga_audit_log_partition(%s)", (old.date(),))
    conn.execute("INSERT INTO saga_audit_log (event, created_at) VALUES ('started', %s)", (old,))
    summary = maintain(conn, TODAY, "saga_audit_log")
    assert ("saga_audit_log", "dropped", month_name("saga_audit_log", old), None) in summary


def test_the_worker_warns_about_rows_kept_past_retention(
    pg_conn: Conn, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    # maintain_partitions() runs as of the real now: the partition is made relative to it.
    (now,) = pg_conn.execute("SELECT now()").fetchone() or (None,)
    assert isinstance(now, datetime)
    old = months_ago(now, 14)
    pg_conn.execute("SELECT create_saga_executions_partition(%s)", (old.date(),))
    add_saga(pg_conn, old, status="RUNNING")

    with caplog.at_level(logging.INFO, logger="sagaz.storage.postgresql.maintenance"):
        report = maintain_partitions(pg_dsn, "saga_executions")

    assert report.count("kept") == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "kept past retention" in warnings[0].getMessage()
    assert month_name("saga_executions", old) in warnings[0].getMessage()
