"""What the roles of roles.sql may and may not do, probed on a real server: shared by the local
cluster's tests (through the read pool and directly) and the generated init scripts' test.

The reader's refusals are probed in a read-write transaction where the server allows one (the
primary): ``default_transaction_read_only`` is only the reader's default, which any role may
turn off, so what must refuse it there are the missing privileges. On a replica every
transaction is read-only and recovery refuses writes anyway; the probes then check that the
statement is refused at all.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

SAGAZ_TABLES = ("saga_executions", "saga_steps", "saga_outbox", "saga_audit_log",
                "saga_definitions", "consumer_inbox", "sagaz_migrations",
                "sagaz_partition_settings")

READER_REFUSED = [
    # The catalogs PUBLIC cannot read: password verifiers, user mappings' options, column
    # statistics (samples of every table's values).
    "SELECT rolname, rolpassword FROM pg_authid",
    "SELECT usename, passwd FROM pg_shadow",
    "SELECT * FROM pg_user_mapping",
    "SELECT * FROM pg_statistic",
    "SELECT pg_read_file('postgresql.conf')",
    # Writes, row locks and strong table locks on sagaz's own tables.
    "INSERT INTO saga_executions (saga_id, saga_name, status) "
    "VALUES (gen_random_uuid(), 'reader', 'PENDING')",
    "UPDATE saga_executions SET status = 'FAILED'",
    "DELETE FROM saga_outbox",
    "TRUNCATE saga_audit_log",
    "SELECT * FROM saga_executions FOR UPDATE",
    "LOCK TABLE saga_executions IN EXCLUSIVE MODE",
    "CREATE TABLE reader_was_here (x int)",
    "CREATE TEMPORARY TABLE reader_was_here (x int)",
    # Advisory locks (sagaz's keys: migrations, lock_saga_ids, partition maintenance) and the
    # outbox relay's wake-up.
    "SELECT pg_advisory_lock(1)",
    "SELECT pg_try_advisory_xact_lock(1935763297, 1)",
    "SELECT pg_advisory_xact_lock_shared(42)",
    "SELECT pg_notify('sagaz_outbox', '')",
    # Becoming another role.
    "SET ROLE postgres",
    "SET SESSION AUTHORIZATION postgres",
]


def connect(conninfo: str) -> psycopg.Connection[Any]:
    # prepare_threshold=None: also through PgBouncer in transaction mode.
    return psycopg.connect(conninfo, autocommit=True, prepare_threshold=None, connect_timeout=5)


def refusal(conninfo: str, statement: str) -> psycopg.Error | None:
    """The error ``statement`` fails with, in a read-write transaction where the server allows
    one; None when it succeeded. Rolled back either way (one transaction: also through
    PgBouncer's transaction pooling)."""
    with connect(conninfo) as conn:
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        conn.execute("BEGIN" if row == (True,) else "BEGIN READ WRITE")
        try:
            conn.execute(statement)
        except psycopg.Error as exc:
            return exc
        finally:
            conn.execute("ROLLBACK")
    return None


def assert_reader_is_least_privileged(reader: str, *, foreign_table: str) -> None:
    """``reader`` (a conninfo of the read-only role) reads the sagaz tables and partition
    statistics and nothing else; ``foreign_table`` is a table a superuser created in another
    schema of the same database."""
    with connect(reader) as conn:
        in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        for table in SAGAZ_TABLES:
            conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
        # Exact counts read every partition itself, not only through its parent.
        stats = conn.execute("SELECT table_name, row_count FROM get_partition_statistics(true)")
        assert {t for t, _ in stats} == {"saga_executions", "saga_outbox", "saga_audit_log"}
        assert conn.execute("SELECT pg_has_role(current_user, 'pg_read_all_data', 'MEMBER'), "
                            "pg_has_role(current_user, 'pg_monitor', 'MEMBER')").fetchone() == (
            False, True)
    failures = {}
    for statement in [*READER_REFUSED, f"SELECT * FROM {foreign_table}"]:
        error = refusal(reader, statement)
        expected: tuple[type[psycopg.Error], ...] = (psycopg.errors.InsufficientPrivilege,)
        if in_recovery:
            expected += (psycopg.errors.ReadOnlySqlTransaction,)
        if not isinstance(error, expected):
            failures[statement] = error
    assert not failures, failures
    if in_recovery:
        assert isinstance(refusal(reader, "NOTIFY sagaz_outbox"),
                          psycopg.errors.ReadOnlySqlTransaction)


def create_foreign_table(superuser: str) -> str:
    """A table of another schema in the database of ``superuser`` (a conninfo), with a row."""
    with connect(superuser) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS not_sagaz")
        conn.execute("CREATE TABLE IF NOT EXISTS not_sagaz.secrets (secret text)")
        conn.execute("INSERT INTO not_sagaz.secrets VALUES ('only for the superuser')")
    return "not_sagaz.secrets"


def assert_app_role_is_confined(app: str, superuser: str, *, app_user: str, database: str,
                                schema: str = "public") -> None:
    """The application role: no cluster-wide power, owns its schema and the objects of the
    migrations (they ran as it) but not the database; it may take advisory locks and NOTIFY."""
    with connect(superuser) as conn:
        attributes = conn.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
            "FROM pg_roles WHERE rolname = %s", (app_user,)).fetchone()
        assert attributes == (False, False, False, False, False)
        owners = conn.execute(
            "SELECT pg_get_userbyid(d.datdba), pg_get_userbyid(n.nspowner) FROM pg_database d, "
            "pg_namespace n WHERE d.datname = %s AND n.nspname = %s",
            (database, schema)).fetchone()
        assert owners is not None and owners[0] != app_user and owners[1] == app_user
        table_owners = {r[0] for r in conn.execute(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = %s "
            "AND tablename LIKE 'saga%%'", (schema,))}
        assert table_owners == {app_user}
    with connect(app) as conn:
        for statement in ("CREATE ROLE app_was_here", "CREATE DATABASE app_was_here",
                          sql.SQL("ALTER DATABASE {} CONNECTION LIMIT 1").format(
                              sql.Identifier(database)),
                          "CREATE SCHEMA app_was_here", "CREATE TEMPORARY TABLE t (x int)",
                          "SELECT rolpassword FROM pg_authid"):
            try:
                conn.execute(statement)
            except psycopg.errors.InsufficientPrivilege:
                continue
            raise AssertionError(f"the application role could: {statement}")
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(1935763297, 1)")
            conn.execute("SELECT pg_notify('sagaz_outbox', '')")
