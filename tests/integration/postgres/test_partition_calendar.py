"""Partition maintenance over the calendar: for any "today" (month, year and leap-day boundaries
included), any change of a table's interval and any premake value, maintenance leaves no row in
DEFAULT, no overlap and no gap from the current period to the premade horizon. Hypothesis picks
the dates; maintain_all_partitions' reference_time makes them "now", so the real date never matters.

Each example runs in a transaction that is rolled back: partitions are DDL, and DDL is
transactional in PostgreSQL, so every example starts from the same bare tables.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from partition_helpers import (
    Conn,
    add_event,
    add_saga,
    changes,
    count,
    drop_dated_partitions,
    maintain,
    ranges,
)


def _boundaries() -> list[datetime]:
    """Instants around month ends, year ends and leap days, where calendars go wrong."""
    points = []
    for year in (2023, 2024, 2025, 2028):
        for month in (1, 2, 3, 12):
            first = datetime(year, month, 1, tzinfo=UTC)
            points += [first, first - timedelta(seconds=1), first + timedelta(hours=12)]
        points.append(datetime(year, 2, 28, 23, 30, tzinfo=UTC))
    points.append(datetime(2024, 2, 29, 0, 0, tzinfo=UTC))
    return points


TODAY = st.one_of(
    st.sampled_from(_boundaries()),
    st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2040, 12, 31),
                 timezones=st.just(UTC)),
)
INTERVALS = st.sampled_from(["day", "month"])


def period_start(interval: str, moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    if interval == "day":
        return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def periods_ahead(interval: str, start: datetime, n: int) -> datetime:
    if interval == "day":
        return start + timedelta(days=n)
    index = start.year * 12 + start.month - 1 + n
    return start.replace(year=index // 12, month=index % 12 + 1)


def add_row(conn: Conn, table: str, at: datetime) -> None:
    if table == "saga_outbox":
        add_event(conn, at)
    else:
        add_saga(conn, at)


@pytest.fixture
def bare_conn(pg_conn: Conn) -> Conn:
    drop_dated_partitions(pg_conn)
    return pg_conn


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    table=st.sampled_from(["saga_outbox", "saga_executions"]),
    first=INTERVALS, then=INTERVALS,
    premake_first=st.integers(0, 9), premake_then=st.integers(0, 9),
    today=TODAY, days_later=st.sampled_from([0, 1, 9, 31, 45]),
    offsets=st.lists(st.integers(-40 * 24, 400 * 24), max_size=12),
)
def test_any_interval_change_on_any_date_leaves_no_row_behind_and_no_gap(
    bare_conn: Conn, table: str, first: str, then: str, premake_first: int, premake_then: int,
    today: datetime, days_later: int, offsets: list[int],
) -> None:
    conn = bare_conn
    later = today + timedelta(days=days_later)
    with conn.transaction(force_rollback=True):
        set_interval(conn, table, first, premake_first)
        maintain(conn, today, table)
        # Rows before and after the change, some far beyond any horizon (they sit in DEFAULT
        # until maintenance makes their period).
        for hours in offsets:
            add_row(conn, table, today + timedelta(hours=hours))
        set_interval(conn, table, then, premake_then)
        for hours in offsets:
            add_row(conn, table, later + timedelta(hours=hours))
        maintain(conn, later, table)

        assert count(conn, f"{table}_default") == 0
        assert count(conn, table) == 2 * len(offsets)
        covered = ranges(conn, table)
        for (_, end), (start, _) in itertools.pairwise(covered):
            assert end <= start, f"overlapping partitions: {covered}"
        current = period_start(then, later)
        horizon = periods_ahead(then, current, premake_then + 1)
        near = [(s, e) for s, e in covered if e > current and s < horizon]
        assert near, f"nothing covers {current}..{horizon}: {covered}"
        assert near[0][0] <= current and near[-1][1] >= horizon, (current, horizon, near)
        for (_, end), (start, _) in itertools.pairwise(near):
            assert end == start, f"gap between {end} and {start}: {near}"
        # A second run as of the same time changes nothing.
        assert changes(maintain(conn, later, table)) == []


def set_interval(conn: Conn, table: str, interval: str, premake: int) -> None:
    conn.execute(
        'UPDATE sagaz_partition_settings SET "interval" = %s, premake = %s WHERE table_name = %s',
        (interval, premake, table),
    )
