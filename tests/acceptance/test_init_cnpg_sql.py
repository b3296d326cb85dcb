"""The bootstrap SQL of the CloudNativePG deployment (roles.sql converted to plain SQL, and the
migrations) run on a real PostgreSQL the way the operator runs it: its initdb creates the owner
role and the database, then each file goes as one query, as the superuser, in that database;
the managed roles set the passwords afterwards. What it leaves is what `sagaz dev up` and
docker-compose leave: least privilege, a schema that `sagaz db migrate` finds current."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from pg_fixtures import dsn_for
from privilege_probes import (
    assert_app_role_is_confined,
    assert_reader_is_least_privileged,
    create_foreign_table,
)
from psycopg import sql

from sagaz.deploy.cnpg_sql import roles_sql, schema_sql
from sagaz.errors import SagazError


@dataclass(frozen=True)
class Bootstrapped:
    app: str
    reader: str
    database: str
    app_dsn: str
    reader_dsn: str
    superuser_dsn: str


@pytest.fixture
def bootstrapped(pg_server: str) -> Iterator[Bootstrapped]:
    suffix = os.urandom(3).hex()
    app, reader, database = f"cnpg_app_{suffix}", f"cnpg_reader_{suffix}", f"cnpg_db_{suffix}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        # What the operator's initdb does: the owner, and the database it owns.
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(app)))
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(database), sql.Identifier(app)))
    try:
        superuser = dsn_for(database)
        with psycopg.connect(superuser, autocommit=True) as conn:
            # One query per file, as postInitApplicationSQLRefs sends them.
            conn.execute(roles_sql(app_user=app, reader_user=reader,
                                   database=database).encode())
            conn.execute(schema_sql(app_user=app).encode())
            # The managed roles, afterwards: passwords and membership from the Cluster's spec.
            for role in (app, reader):
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(os.urandom(12).hex())))
            conn.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(reader)))
        yield Bootstrapped(app, reader, database,
                           psycopg.conninfo.make_conninfo(superuser, user=app),
                           psycopg.conninfo.make_conninfo(superuser, user=reader), superuser)
    finally:
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(database)))
            for role in (reader, app):
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_bootstrap_sql_leaves_the_schema_current_and_the_roles_least_privileged(
    bootstrapped: Bootstrapped,
) -> None:
    from sagaz.storage.postgresql.migrate import migrate

    with psycopg.connect(bootstrapped.app_dsn, autocommit=True) as conn:
        assert migrate(conn) == []  # sagaz finds the schema current: the same bookkeeping
        stats = conn.execute("SELECT table_name FROM get_partition_statistics()").fetchall()
        assert {t for (t,) in stats} == {"saga_executions", "saga_outbox", "saga_audit_log"}
        conn.execute("INSERT INTO saga_executions (saga_id, saga_name, status) "
                     "VALUES (gen_random_uuid(), 'x', 'PENDING')")
    with psycopg.connect(bootstrapped.reader_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM saga_executions").fetchone() == (1,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM saga_executions")
    # The database belongs to the superuser again (initdb gave it to the owner), the
    # application owns its schema and tables; the reader reads sagaz's tables and nothing else.
    assert_app_role_is_confined(bootstrapped.app_dsn, bootstrapped.superuser_dsn,
                                app_user=bootstrapped.app, database=bootstrapped.database)
    assert_reader_is_least_privileged(
        bootstrapped.reader_dsn, foreign_table=create_foreign_table(bootstrapped.superuser_dsn))


def test_roles_sql_refuses_a_psql_command_it_cannot_convert(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A later edit of roles.sql with a meta-command plain SQL has no form for must fail the
    generation, not silently drop the command."""
    from sagaz.deploy import cnpg_sql

    monkeypatch.setattr(cnpg_sql, "_roles_source", lambda: "\\copy t FROM 'x'\n")
    with pytest.raises(SagazError, match=r"roles.sql uses \\copy"):
        roles_sql(app_user="a", reader_user="r", database="d")
    monkeypatch.setattr(cnpg_sql, "_roles_source", lambda: "SELECT :'unknown_name' \\gexec\n")
    with pytest.raises(SagazError, match="unknown_name"):
        roles_sql(app_user="a", reader_user="r", database="d")
