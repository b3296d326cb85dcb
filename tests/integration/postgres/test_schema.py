"""The PostgreSQL schema and its migrations, on a real server."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import TupleRow

from sagaz.errors import StorageError
from sagaz.storage.postgresql.migrate import MIGRATION_LOCK_KEY, migrate, migrate_async
from sagaz.storage.sql import migrations

Conn = psycopg.Connection[TupleRow]

PARTITIONED = {"saga_executions": "created_at", "saga_outbox": "created_at",
               "saga_audit_log": "created_at"}
PLAIN = {"saga_steps", "saga_signals", "consumer_inbox", "sagaz_partition_settings",
         "sagaz_migrations", "saga_definitions"}
ALL_VERSIONS = [m.version for m in migrations("postgresql")]


def recorded(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT version, name FROM sagaz_migrations ORDER BY version").fetchall()


# --- migrations ---------------------------------------------------------------------------------


def test_migrations_apply_on_a_fresh_database_and_are_recorded(pg_empty_dsn: str) -> None:
    with psycopg.connect(pg_empty_dsn, autocommit=True) as conn:
        assert migrate(conn) == ALL_VERSIONS
        assert ALL_VERSIONS[:3] == [1, 2, 3]
        assert recorded(conn) == [(m.version, m.name) for m in migrations("postgresql")]
        assert recorded(conn)[:3] == [
            (1, "saga_tables"), (2, "partition_maintenance"), (3, "partition_safety")]
        stamps = conn.execute("SELECT applied_at FROM sagaz_migrations").fetchall()
        assert all(stamp is not None for (stamp,) in stamps)


def test_migrate_also_works_on_a_non_autocommit_connection(pg_empty_dsn: str) -> None:
    with psycopg.connect(pg_empty_dsn) as conn:
        assert migrate(conn) == ALL_VERSIONS
    with psycopg.connect(pg_empty_dsn, autocommit=True) as conn:
        assert [v for v, _ in recorded(conn)] == ALL_VERSIONS


def test_rerunning_migrate_is_a_no_op(pg_conn: Conn) -> None:
    def snapshot() -> list[tuple[Any, ...]]:
        return pg_conn.execute(
            "SELECT relname, relkind FROM pg_class "
            "WHERE relnamespace = 'public'::regnamespace ORDER BY relname"
        ).fetchall()

    before, history = snapshot(), recorded(pg_conn)
    assert migrate(pg_conn) == []
    assert migrate(pg_conn) == []
    assert snapshot() == before
    assert recorded(pg_conn) == history


async def test_migrate_async(pg_empty_dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_empty_dsn, autocommit=True) as conn:
        assert await migrate_async(conn) == ALL_VERSIONS
        assert await migrate_async(conn) == []


def test_concurrent_migrate_applies_each_migration_once(
    pg_empty_dsn: str, wait_for_lock_waiters: Callable[[Conn, int], None]
) -> None:
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            with psycopg.connect(pg_empty_dsn, autocommit=True) as conn:
                results[index] = migrate(conn)
        except BaseException as exc:
            errors.append(exc)

    with psycopg.connect(pg_empty_dsn, autocommit=True) as gate:
        # Hold the migration lock so both callers queue on it, then release them together.
        with gate.transaction():
            gate.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
            for thread in threads:
                thread.start()
            wait_for_lock_waiters(gate, 2)
        for thread in threads:
            thread.join(30)
        assert not errors, errors
        assert sorted(results[0] + results[1]) == ALL_VERSIONS
        assert [v for v, _ in recorded(gate)] == ALL_VERSIONS


def test_a_foreign_table_of_the_same_name_stops_migrate_with_a_clear_error(
    pg_empty_dsn: str,
) -> None:
    with psycopg.connect(pg_empty_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE saga_executions (id integer PRIMARY KEY, note text)")
        conn.execute("INSERT INTO saga_executions VALUES (1, 'theirs')")
        with pytest.raises(StorageError) as caught:
            migrate(conn)
        message = str(caught.value)
        assert "0001_saga_tables" in message
        assert 'table "public".saga_executions' in message
        assert "not created by sagaz" in message
        assert "Rename or drop" in message
        # Nothing applied (not even the bookkeeping table), their table untouched.
        assert conn.execute("SELECT to_regclass('sagaz_migrations')").fetchone() == (None,)
        assert conn.execute("SELECT note FROM saga_executions").fetchall() == [("theirs",)]
        assert conn.execute("SELECT to_regclass('saga_outbox')").fetchone() == (None,)


def test_a_foreign_function_stops_the_migration_that_would_replace_it(
    pg_empty_dsn: str,
) -> None:
    with psycopg.connect(pg_empty_dsn, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION maintain_all_partitions() RETURNS int "
                     "LANGUAGE sql AS 'SELECT 42'")
        with pytest.raises(StorageError, match=r"0002_partition_maintenance.*function"):
            migrate(conn)
        # 0001 went in (its own transaction); 0002 did not, their function survives.
        assert recorded(conn) == [(1, "saga_tables")]
        assert conn.execute("SELECT maintain_all_partitions()").fetchone() == (42,)


def test_a_foreign_migrations_table_is_refused(pg_empty_dsn: str) -> None:
    with psycopg.connect(pg_empty_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE sagaz_migrations (id serial PRIMARY KEY, script text)")
        with pytest.raises(StorageError, match="sagaz_migrations exists but was not created"):
            migrate(conn)


def test_migrate_refuses_a_connection_inside_a_transaction(pg_empty_dsn: str) -> None:
    with psycopg.connect(pg_empty_dsn) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(StorageError, match="outside any transaction"):
            migrate(conn)


def test_migrations_go_to_the_current_schema_and_functions_quote_identifiers(
    pg_empty_dsn: str,
) -> None:
    """A schema name that needs quoting everywhere: functions built their DDL with %I."""
    odd = 'Sagaz "Odd" Schema'
    with psycopg.connect(pg_empty_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(odd)))
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(odd)))
        assert migrate(conn) == ALL_VERSIONS
        conn.execute("SET search_path TO public")
        assert conn.execute("SELECT to_regclass('saga_executions')").fetchone() == (None,)

        # Called from another search_path, the functions still act on their own schema.
        schema = sql.Identifier(odd)
        conn.execute(
            sql.SQL("INSERT INTO {}.saga_executions (saga_id, saga_name, status, created_at) "
                    "VALUES (%s, 'x', 'PENDING', now() - interval '2 months')").format(schema),
            (uuid.uuid4(),),
        )
        actions = conn.execute(
            sql.SQL("SELECT action FROM {}.maintain_all_partitions()").format(schema)
        ).fetchall()
        assert ("moved",) in actions
        (default_rows,) = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.saga_executions_default").format(schema)
        ).fetchone() or (None,)
        assert default_rows == 0


# --- tables and partitioning --------------------------------------------------------------------


def test_tables_exist_with_the_right_partitioning(pg_readonly_conn: Conn) -> None:
    rows = pg_readonly_conn.execute(
        """
        SELECT c.relname, pt.partstrat, a.attname
        FROM pg_partitioned_table pt
        JOIN pg_class c ON c.oid = pt.partrelid
        JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
        WHERE c.relnamespace = 'public'::regnamespace
        """
    ).fetchall()
    assert {name: (strategy, key) for name, strategy, key in rows} == {
        name: ("r", key) for name, key in PARTITIONED.items()
    }
    plain = pg_readonly_conn.execute(
        "SELECT relname, relkind, relispartition FROM pg_class "
        "WHERE relnamespace = 'public'::regnamespace AND relname = ANY(%s)",
        (list(PLAIN),),
    ).fetchall()
    assert {(name, kind, part) for name, kind, part in plain} == {
        (name, "r", False) for name in PLAIN
    }


def test_partition_settings_are_seeded(pg_readonly_conn: Conn) -> None:
    rows = pg_readonly_conn.execute(
        'SELECT table_name, "interval", retention::text, premake FROM sagaz_partition_settings '
        "ORDER BY table_name"
    ).fetchall()
    assert [row[:3] for row in rows] == [
        ("saga_audit_log", "month", "1 year"),
        ("saga_executions", "month", "1 year"),
        ("saga_outbox", "day", "30 days"),
    ]
    assert all(premake >= 1 for *_, premake in rows)


def test_every_primary_key_and_unique_constraint_includes_the_partition_key(
    pg_readonly_conn: Conn,
) -> None:
    rows = pg_readonly_conn.execute(
        """
        SELECT c.relname, con.conname, con.contype,
               array(SELECT attname FROM pg_attribute
                     WHERE attrelid = con.conrelid AND attnum = ANY(con.conkey))
        FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'p'
          AND con.contype IN ('p', 'u', 'x')
        """
    ).fetchall()
    assert {table for table, _, kind, _ in rows if kind == "p"} == set(PARTITIONED)
    for table, name, _, columns in rows:
        assert PARTITIONED[table] in columns, f"{name} on {table} lacks the partition key"


def test_primary_keys(pg_readonly_conn: Conn) -> None:
    rows = pg_readonly_conn.execute(
        """
        SELECT c.relname, array(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(n, i)
                                JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n
                                ORDER BY k.i)
        FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
        WHERE con.contype = 'p' AND c.relnamespace = 'public'::regnamespace
          AND NOT c.relispartition
        """
    ).fetchall()
    assert dict(rows) == {
        "saga_executions": ["saga_id", "created_at"],
        "saga_outbox": ["event_id", "created_at"],
        "saga_audit_log": ["id", "created_at"],
        "saga_steps": ["saga_id", "step_name"],
        "saga_signals": ["saga_id", "signal_id"],
        "consumer_inbox": ["consumer_name", "event_id"],
        "sagaz_partition_settings": ["table_name"],
        "sagaz_migrations": ["version"],
        "saga_definitions": ["fingerprint"],
    }


def test_each_partitioned_table_has_a_default_partition(pg_readonly_conn: Conn) -> None:
    rows = pg_readonly_conn.execute(
        "SELECT partrelid::regclass::text, partdefid::regclass::text FROM pg_partitioned_table"
    ).fetchall()
    assert dict(rows) == {name: f"{name}_default" for name in PARTITIONED}


def test_migration_creates_the_current_and_premade_partitions(pg_readonly_conn: Conn) -> None:
    rows = pg_readonly_conn.execute(
        """
        SELECT i.inhparent::regclass::text, c.relname
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE c.relkind IN ('r', 'p')
        """
    ).fetchall()
    names = {name for _, name in rows}
    month = pg_readonly_conn.execute(
        "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY_MM'), "
        "to_char(now() AT TIME ZONE 'UTC' + interval '3 months', 'YYYY_MM'), "
        "to_char(now() AT TIME ZONE 'UTC', 'YYYY_MM_DD'), "
        "to_char(now() AT TIME ZONE 'UTC' + interval '7 days', 'YYYY_MM_DD')"
    ).fetchone()
    assert month is not None
    this_month, in_3_months, today, in_7_days = month
    for table in ("saga_executions", "saga_audit_log"):
        assert {f"{table}_p{this_month}", f"{table}_p{in_3_months}"} <= names
    assert {f"saga_outbox_p{today}", f"saga_outbox_p{in_7_days}"} <= names
    # current + 3 ahead monthly, current + 7 ahead daily, plus the three defaults.
    assert len(rows) == 4 + 4 + 8 + 3


def test_inserts_land_in_dated_partitions(pg_conn: Conn) -> None:
    saga_id = uuid.uuid4()
    pg_conn.execute("INSERT INTO saga_executions (saga_id, saga_name, status) "
                    "VALUES (%s, 'order', 'RUNNING')", (saga_id,))
    pg_conn.execute("INSERT INTO saga_outbox (event_id, saga_id, event_type) "
                    "VALUES (%s, %s, 'order.created')", (uuid.uuid4(), saga_id))
    pg_conn.execute("INSERT INTO saga_audit_log (saga_id, event) VALUES (%s, 'started')",
                    (saga_id,))
    for table in PARTITIONED:
        (where,) = pg_conn.execute(
            sql.SQL("SELECT tableoid::regclass::text FROM {}").format(sql.Identifier(table))
        ).fetchone() or (None,)
        assert where is not None
        assert where.startswith(f"{table}_p"), where


def test_timestamps_are_timestamptz_everywhere(pg_readonly_conn: Conn) -> None:
    rows = pg_readonly_conn.execute(
        """
        SELECT c.relname, a.attname
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
          AND a.attnum > 0 AND a.atttypid IN ('timestamp'::regtype, 'date'::regtype)
        """
    ).fetchall()
    assert rows == []


@pytest.mark.parametrize(
    ("insert", "good", "bad"),
    [
        ("INSERT INTO saga_executions (saga_id, saga_name, status) VALUES (%s, 'n', %s)",
         "COMPENSATING", "DONE"),
        ("INSERT INTO saga_steps (saga_id, step_name, status) VALUES (%s, 's', %s)",
         "COMPENSATION_FAILED", "completed"),
        ("INSERT INTO saga_outbox (event_id, event_type, status) VALUES (%s, 't', %s)",
         "DEAD_LETTER", "LOST"),
    ],
)
def test_status_check_constraints_reject_bogus_statuses(
    pg_conn: Conn, insert: str, good: str, bad: str
) -> None:
    pg_conn.execute(insert.encode(), (uuid.uuid4(), good))
    with pytest.raises(psycopg.errors.CheckViolation):
        pg_conn.execute(insert.encode(), (uuid.uuid4(), bad))


def test_functions_quote_dynamic_identifiers(pg_readonly_conn: Conn) -> None:
    rows = pg_readonly_conn.execute(
        """
        SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p
        WHERE p.pronamespace = 'public'::regnamespace
          AND p.prolang = (SELECT oid FROM pg_language WHERE lanname = 'plpgsql')
        """
    ).fetchall()
    bodies: dict[str, str] = dict(rows)
    for name in ("sagaz_fill_gap", "maintain_all_partitions", "sagaz_partitioned_table",
                 "get_partition_statistics"):
        assert "format(" in bodies[name] and "%I" in bodies[name], name
    for name, body in bodies.items():
        # Dynamic SQL is only ever built by format(), never by concatenating names.
        for line in body.splitlines():
            if "EXECUTE" in line and "format(" not in line:
                assert "||" not in line, f"{name}: {line.strip()}"
    # And they are pinned to their schema, whatever the caller's search_path.
    configs = pg_readonly_conn.execute(
        "SELECT proname, proconfig FROM pg_proc WHERE proname = ANY(%s)",
        (["maintain_all_partitions", "create_saga_outbox_partition"],),
    ).fetchall()
    for name, config in configs:
        assert "search_path=public, pg_temp" in config, name
