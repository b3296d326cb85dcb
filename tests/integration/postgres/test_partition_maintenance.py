"""Partition functions of 0002 (creation, DEFAULT row moves, retention, statistics, inbox cleanup),
on a real PostgreSQL."""

from __future__ import annotations

import itertools
import json
import re
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest
from partition_helpers import (
    PARTITIONED,
    REFERENCE_TIMES,
    Conn,
    add_audit,
    add_event,
    add_saga,
    changes,
    count,
    day_name,
    drop_dated_partitions,
    exists,
    maintain,
    month_name,
    months_ago,
    partitions,
    ranges,
    where_rows_are,
)

SAGA_LOCK_CLASS = 1935763297  # the class id sagaz_lock_partitioned_table() locks under
Wait = Callable[[Conn, int], None]


@pytest.fixture(params=REFERENCE_TIMES, ids=lambda at: f"{at:%Y-%m-%dT%H%M}")
def today(request: pytest.FixtureRequest) -> datetime:
    """The "now" maintenance runs as of (maintain_all_partitions' reference_time)."""
    value = request.param
    assert isinstance(value, datetime)
    return value


@pytest.fixture
def pg_conn(pg_conn: Conn) -> Conn:
    """The plugin's connection, on a database with no dated partitions yet (see
    drop_dated_partitions): each test builds those of its own reference time."""
    drop_dated_partitions(pg_conn)
    return pg_conn


# --- rows in DEFAULT ----------------------------------------------------------------------------


def test_stray_rows_land_in_default_and_maintenance_moves_them_out(
    pg_conn: Conn, today: datetime
) -> None:
    t = today
    sagas = {add_saga(pg_conn, months_ago(t, 5)): months_ago(t, 5),
             add_saga(pg_conn, months_ago(t, 5) + timedelta(hours=1)): months_ago(t, 5),
             add_saga(pg_conn, months_ago(t, -36)): months_ago(t, -36)}
    events = {add_event(pg_conn, t - timedelta(days=10)): t - timedelta(days=10),
              add_event(pg_conn, t + timedelta(days=100)): t + timedelta(days=100)}
    audits = {add_audit(pg_conn, months_ago(t, 2)): months_ago(t, 2)}
    assert count(pg_conn, "saga_executions_default") == 3
    assert count(pg_conn, "saga_outbox_default") == 2
    assert count(pg_conn, "saga_audit_log_default") == 1

    summary = maintain(pg_conn, t)

    for table in PARTITIONED:
        assert count(pg_conn, f"{table}_default") == 0, table
    assert where_rows_are(pg_conn, "saga_executions", "saga_id") == {
        saga_id: month_name("saga_executions", at) for saga_id, at in sagas.items()
    }
    assert where_rows_are(pg_conn, "saga_outbox", "event_id") == {
        event_id: day_name("saga_outbox", at) for event_id, at in events.items()
    }
    assert where_rows_are(pg_conn, "saga_audit_log", "id") == {
        audit_id: month_name("saga_audit_log", at) for audit_id, at in audits.items()
    }
    moved = {(table, name): detail for table, action, name, detail in summary
             if action == "moved"}
    assert moved[("saga_executions", month_name("saga_executions", months_ago(t, 5)))] == (
        "2 rows from saga_executions_default"
    )
    assert len(moved) == 5
    # Moved rows keep their content, including identity values; new inserts do not collide.
    next_id = add_audit(pg_conn, t)
    assert next_id not in audits


def test_maintenance_is_idempotent(pg_conn: Conn, today: datetime) -> None:
    t = today
    add_saga(pg_conn, months_ago(t, 4))
    add_event(pg_conn, t - timedelta(days=3))
    first = maintain(pg_conn, t)
    assert changes(first)
    before = partitions(pg_conn)

    second = maintain(pg_conn, t)

    assert changes(second) == []
    assert sorted(row[0] for row in second) == list(PARTITIONED)  # one 'analyzed' per table
    assert partitions(pg_conn) == before


def test_maintenance_of_one_table(pg_conn: Conn, today: datetime) -> None:
    t = today
    add_saga(pg_conn, months_ago(t, 4))
    add_event(pg_conn, t - timedelta(days=3))

    summary = maintain(pg_conn, t, "saga_outbox")

    assert {table for table, *_ in summary} == {"saga_outbox"}
    assert count(pg_conn, "saga_outbox_default") == 0
    assert count(pg_conn, "saga_executions_default") == 1
    with pytest.raises(psycopg.errors.RaiseException, match="no row in sagaz_partition_settings"):
        pg_conn.execute("SELECT * FROM maintain_all_partitions('saga_steps')")


def test_concurrent_maintenance_runs_both_succeed_without_duplicates(
    pg_dsn: str, wait_for_lock_waiters: Wait, today: datetime
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as gate:
        t = today
        drop_dated_partitions(gate)
        sagas = [add_saga(gate, months_ago(t, m)) for m in (2, 3, 3, 7)]
        events = [add_event(gate, t - timedelta(days=d)) for d in (1, 2, 2, 9)]
        summaries, errors = run_concurrently(
            pg_dsn, gate, lambda conn: maintain(conn, t), first_table="saga_audit_log",
            wait=wait_for_lock_waiters,
        )
        assert not errors, errors

        combined = changes(summaries[0]) + changes(summaries[1])
        assert len(combined) == len(set(combined)), "a partition was created or moved twice"
        assert count(gate, "saga_executions_default") == 0
        assert count(gate, "saga_outbox_default") == 0
        assert sorted(where_rows_are(gate, "saga_executions", "saga_id")) == sorted(sagas)
        assert sorted(where_rows_are(gate, "saga_outbox", "event_id")) == sorted(events)
        names = [name for _, name, _ in partitions(gate)]
        assert len(names) == len(set(names))


def test_concurrent_creation_of_the_same_partition(
    pg_dsn: str, wait_for_lock_waiters: Wait
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as gate:
        day = date(2031, 3, 14)
        results, errors = run_concurrently(
            pg_dsn, gate,
            lambda conn: conn.execute("SELECT create_saga_outbox_partition(%s)", (day,)).fetchone(),
            first_table="saga_outbox",
            wait=wait_for_lock_waiters,
        )
        assert not errors, errors
        assert results[0] == results[1] == ("saga_outbox_p2031_03_14",)
        assert [n for _, n, _ in partitions(gate)].count("saga_outbox_p2031_03_14") == 1


def run_concurrently(
    dsn: str, gate: Conn, work: Callable[[Conn], Any], *, first_table: str, wait: Wait
) -> tuple[list[Any], list[BaseException]]:
    """Run ``work`` in two sessions that start together: both queue behind ``gate``, which holds
    the partition lock of ``first_table`` until both wait, then lets them race."""
    results: list[Any] = [None, None]
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                results[index] = work(conn)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    with gate.transaction():
        gate.execute("SELECT pg_advisory_xact_lock(%s, %s::regclass::oid::integer)",
                     (SAGA_LOCK_CLASS, first_table))
        for thread in threads:
            thread.start()
        wait(gate, 2)
    for thread in threads:
        thread.join(30)
    return results, errors


# --- creation functions -------------------------------------------------------------------------


def test_create_functions_return_the_partition_and_are_idempotent(pg_conn: Conn) -> None:
    calls = {
        "SELECT create_saga_executions_partition('2030-05-17')": "saga_executions_p2030_05",
        "SELECT create_saga_audit_log_partition('2030-05-01')": "saga_audit_log_p2030_05",
        "SELECT create_saga_outbox_partition('2030-05-17')": "saga_outbox_p2030_05_17",
    }
    for query, name in calls.items():
        assert pg_conn.execute(query.encode()).fetchone() == (name,)
    before = partitions(pg_conn)
    for query, name in calls.items():
        assert pg_conn.execute(query.encode()).fetchone() == (name,)
    assert partitions(pg_conn) == before
    bound = dict((n, b) for _, n, b in before)
    assert bound["saga_executions_p2030_05"] == (
        "FOR VALUES FROM ('2030-05-01 00:00:00+00') TO ('2030-06-01 00:00:00+00')"
    )
    assert bound["saga_outbox_p2030_05_17"] == (
        "FOR VALUES FROM ('2030-05-17 00:00:00+00') TO ('2030-05-18 00:00:00+00')"
    )


def test_partition_bounds_are_utc_whatever_the_session_time_zone(pg_conn: Conn) -> None:
    pg_conn.execute("SET TimeZone = 'Pacific/Kiritimati'")  # UTC+14
    assert pg_conn.execute(
        "SELECT create_saga_outbox_partition('2030-01-01')"
    ).fetchone() == ("saga_outbox_p2030_01_01",)
    pg_conn.execute("SET TimeZone = 'UTC'")
    (bound,) = pg_conn.execute(
        "SELECT pg_get_expr(relpartbound, oid) FROM pg_class "
        "WHERE relname = 'saga_outbox_p2030_01_01'"
    ).fetchone() or (None,)
    assert bound == "FOR VALUES FROM ('2030-01-01 00:00:00+00') TO ('2030-01-02 00:00:00+00')"


def test_creating_a_partition_moves_its_rows_out_of_default(pg_conn: Conn) -> None:
    at = datetime(2032, 7, 9, 23, 59, tzinfo=UTC)
    saga_id = add_saga(pg_conn, at)
    assert where_rows_are(pg_conn, "saga_executions", "saga_id") == {
        saga_id: "saga_executions_default"
    }
    assert pg_conn.execute("SELECT create_saga_executions_partition('2032-07-01')").fetchone() == (
        "saga_executions_p2032_07",
    )
    assert where_rows_are(pg_conn, "saga_executions", "saga_id") == {
        saga_id: "saga_executions_p2032_07"
    }


def test_a_foreign_table_with_a_partition_name_is_reported(pg_conn: Conn) -> None:
    pg_conn.execute("CREATE TABLE saga_outbox_p2030_02_03 (x integer)")
    with pytest.raises(psycopg.errors.DuplicateTable, match="is not a partition of saga_outbox"):
        pg_conn.execute("SELECT create_saga_outbox_partition('2030-02-03')")


def test_maintenance_refuses_repeatable_read(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with pytest.raises(psycopg.errors.RaiseException, match="READ COMMITTED"):
            conn.execute("SELECT * FROM maintain_all_partitions()")


def test_changing_the_interval_never_overlaps_partitions(pg_conn: Conn, today: datetime) -> None:
    t = today
    pg_conn.execute("UPDATE sagaz_partition_settings SET \"interval\" = 'month', premake = 2 "
                    "WHERE table_name = 'saga_outbox'")
    early = add_event(pg_conn, t.replace(day=1, hour=0, minute=1))  # before today's day partition
    later = [add_event(pg_conn, t + timedelta(days=d)) for d in (1, 8, 20, 45, 70)]
    maintain(pg_conn, t)

    assert count(pg_conn, "saga_outbox_default") == 0
    assert set(where_rows_are(pg_conn, "saga_outbox", "event_id")) == {early, *later}
    stats = ranges(pg_conn, "saga_outbox")
    for (_, end), (start, _) in itertools.pairwise(stats):
        assert end <= start
    # Two months ahead of today are covered without gaps.
    horizon = months_ago(t, -2)
    covered = [(s, e) for s, e in stats if e > t and s < horizon]
    for (_, end), (start, _) in itertools.pairwise(covered):
        assert end == start


# --- retention ----------------------------------------------------------------------------------


def test_retention_drops_expired_partitions_and_keeps_recent_ones(
    pg_conn: Conn, today: datetime
) -> None:
    t = today
    old, recent = months_ago(t, 14), months_ago(t, 11)
    old_saga = add_saga(pg_conn, old, steps=2)
    recent_saga = add_saga(pg_conn, recent, steps=2)
    # Sent: finished, so its partition may go (unsent events are kept, test_partition_retention).
    old_event = add_event(pg_conn, t - timedelta(days=40), status="SENT")
    recent_event = add_event(pg_conn, t - timedelta(days=20))
    add_audit(pg_conn, old)
    for day in (old.date(), recent.date()):
        pg_conn.execute("SELECT create_saga_executions_partition(%s)", (day,))
        pg_conn.execute("SELECT create_saga_audit_log_partition(%s)", (day,))
    assert exists(pg_conn, month_name("saga_executions", old))

    summary = maintain(pg_conn, t)

    dropped = {(table, name) for table, action, name, _ in summary if action == "dropped"}
    assert dropped == {
        ("saga_executions", month_name("saga_executions", old)),
        ("saga_audit_log", month_name("saga_audit_log", old)),
        ("saga_outbox", day_name("saga_outbox", t - timedelta(days=40))),
    }
    assert not exists(pg_conn, month_name("saga_executions", old))
    assert not exists(pg_conn, day_name("saga_outbox", t - timedelta(days=40)))
    assert list(where_rows_are(pg_conn, "saga_executions", "saga_id")) == [recent_saga]
    assert list(where_rows_are(pg_conn, "saga_outbox", "event_id")) == [recent_event]
    assert old_event not in where_rows_are(pg_conn, "saga_outbox", "event_id")
    # The steps of dropped sagas go with them; the others stay.
    steps = pg_conn.execute("SELECT DISTINCT saga_id FROM saga_steps").fetchall()
    assert steps == [(recent_saga,)]
    assert old_saga != recent_saga
    assert exists(pg_conn, month_name("saga_executions", recent))
    assert exists(pg_conn, month_name("saga_executions", t))


def test_retention_comes_from_the_settings_table(pg_conn: Conn, today: datetime) -> None:
    t = today
    ten_days_ago = t - timedelta(days=10)
    pg_conn.execute("SELECT create_saga_outbox_partition(%s)", (ten_days_ago.date(),))
    assert maintain(pg_conn, t) and exists(pg_conn, day_name("saga_outbox", ten_days_ago))

    pg_conn.execute("UPDATE sagaz_partition_settings SET retention = interval '5 days' "
                    "WHERE table_name = 'saga_outbox'")
    pg_conn.execute("UPDATE sagaz_partition_settings SET retention = NULL "
                    "WHERE table_name = 'saga_audit_log'")
    pg_conn.execute("SELECT create_saga_audit_log_partition(%s)", (months_ago(t, 30).date(),))
    summary = maintain(pg_conn, t)

    assert [(tb, n) for tb, a, n, _ in summary if a == "dropped"] == [
        ("saga_outbox", day_name("saga_outbox", ten_days_ago))
    ]
    # NULL retention keeps everything, even 30 months back.
    assert exists(pg_conn, month_name("saga_audit_log", months_ago(t, 30)))
    with pytest.raises(psycopg.errors.CheckViolation):
        pg_conn.execute("UPDATE sagaz_partition_settings SET retention = interval '-1 day'")


# --- queries ------------------------------------------------------------------------------------


def test_a_one_month_range_query_scans_only_one_partition(pg_conn: Conn, today: datetime) -> None:
    t = today
    for months in range(0, 4):
        add_saga(pg_conn, months_ago(t, months))
        add_saga(pg_conn, months_ago(t, -months))
    maintain(pg_conn, t)
    start = datetime(t.year, t.month, 1, tzinfo=UTC)
    end = months_ago(start, -1)

    (plan,) = pg_conn.execute(
        "EXPLAIN (FORMAT JSON) SELECT count(*) FROM saga_executions "
        "WHERE created_at >= %s AND created_at < %s",
        (start, end),
    ).fetchone() or (None,)
    assert scanned_relations(plan) == {month_name("saga_executions", start)}


def scanned_relations(plan: Any) -> set[str]:
    found: set[str] = set()
    text = json.dumps(plan)
    found.update(re.findall(r'"Relation Name": "([^"]+)"', text))
    return found


def test_cleanup_consumer_inbox_deletes_only_old_rows(pg_conn: Conn) -> None:
    ages = {"a": 100, "b": 40, "c": 10, "d": 0}
    for consumer, days in ages.items():
        pg_conn.execute(
            "INSERT INTO consumer_inbox (consumer_name, event_id, processed_at) "
            "VALUES (%s, %s, now() - make_interval(days => %s))",
            (consumer, uuid.uuid4(), days),
        )
    assert pg_conn.execute("SELECT cleanup_consumer_inbox()").fetchone() == (1,)  # 90 days
    assert pg_conn.execute("SELECT cleanup_consumer_inbox(30)").fetchone() == (1,)
    assert pg_conn.execute("SELECT cleanup_consumer_inbox(30)").fetchone() == (0,)
    left = pg_conn.execute("SELECT consumer_name FROM consumer_inbox ORDER BY 1").fetchall()
    assert left == [("c",), ("d",)]
    with pytest.raises(psycopg.errors.RaiseException, match="non-negative"):
        pg_conn.execute("SELECT cleanup_consumer_inbox(-1)")


def test_partition_statistics_one_row_per_partition(pg_conn: Conn, today: datetime) -> None:
    t = today
    maintain(pg_conn, t)  # the partitions of t and ahead, as the migration makes for a real today
    for _ in range(3):
        add_saga(pg_conn, t)
    add_event(pg_conn, t)
    add_saga(pg_conn, months_ago(t, -48))  # far future: stays in DEFAULT until maintenance

    rows = pg_conn.execute("SELECT * FROM get_partition_statistics(exact => true)").fetchall()

    expected = {(parent, name) for parent, name, _ in partitions(pg_conn)}
    assert {(table, name) for table, name, *_ in rows} == expected
    assert len(rows) == len(expected)
    by_name = {name: row for _, name, *row in rows}
    for table in PARTITIONED:
        assert by_name[f"{table}_default"][:2] == [None, None]
    assert by_name["saga_executions_default"][2] == 1
    assert by_name[month_name("saga_executions", t)][2] == 3
    assert by_name[day_name("saga_outbox", t)][2] == 1
    for table, name, start, end, row_count, total_bytes in rows:
        assert total_bytes > 0 and row_count >= 0
        if start is not None:
            assert start < end
            assert re.fullmatch(rf"{table}_p\d{{4}}_\d\d(_\d\d)?", name)
    # Default estimates (planner statistics) and exact counts agree after maintenance ANALYZEs.
    maintain(pg_conn, t)
    estimated = pg_conn.execute(
        "SELECT partition_name, row_count FROM get_partition_statistics() "
        "WHERE table_name = 'saga_executions' AND row_count > 0"
    ).fetchall()
    assert dict(estimated) == {
        month_name("saga_executions", t): 3,
        month_name("saga_executions", months_ago(t, -48)): 1,
    }
