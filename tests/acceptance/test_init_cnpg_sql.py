"""The bootstrap SQL of the CloudNativePG deployment (roles.sql converted to plain SQL, and the
migrations) run on a real PostgreSQL the way the operator runs it: its initdb creates the owner
role and the database, then each file goes as one query, as the superuser, in that database;
the managed roles set the passwords afterwards. What it leaves is what `sagaz dev up` and
docker-compose leave: least privilege, a schema that `sagaz db migrate` finds current."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

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

# What roles.sql leaves, name by name (roles replaced by their part: app, reader): attributes,
# memberships, role settings, the database's and the schema's owners and ACLs, default
# privileges, and who may execute the advisory-lock functions and pg_notify().
_GRANTS = """
SELECT 'role', rolname, concat_ws(' ', rolsuper, rolinherit, rolcreaterole, rolcreatedb,
       rolcanlogin, rolreplication, rolbypassrls)
  FROM pg_roles WHERE rolname IN (%(app)s, %(reader)s)
UNION ALL
SELECT 'member', r.rolname, m.rolname FROM pg_auth_members a
  JOIN pg_roles r ON r.oid = a.member JOIN pg_roles m ON m.oid = a.roleid
 WHERE r.rolname IN (%(app)s, %(reader)s)
UNION ALL
SELECT 'setting', coalesce(r.rolname, '-') || '@' || coalesce(d.datname, '-'),
       array_to_string(s.setconfig, ',')
  FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole
  LEFT JOIN pg_database d ON d.oid = s.setdatabase
 WHERE r.rolname IN (%(app)s, %(reader)s)
UNION ALL
SELECT 'database', pg_get_userbyid(datdba), datacl::text FROM pg_database
 WHERE datname = current_database()
UNION ALL
SELECT 'schema', pg_get_userbyid(nspowner), nspacl::text FROM pg_namespace
 WHERE nspname = 'public'
UNION ALL
SELECT 'default', pg_get_userbyid(defaclrole), defaclacl::text FROM pg_default_acl
UNION ALL
SELECT 'function', p.oid::regprocedure::text, p.proacl::text FROM pg_proc p
 WHERE p.pronamespace = 'pg_catalog'::regnamespace
   AND (p.proname LIKE 'pg\\_%%advisory\\_%%' OR p.proname = 'pg_notify')
"""


def _grants(conninfo: str, app: str, reader: str) -> set[tuple[str, ...]]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(_GRANTS, {"app": app, "reader": reader}).fetchall()
    database = conninfo_database(conninfo)

    def normal(value: Any) -> str:
        # Names differ between the two runs (roles are global to the server): by their part.
        return (str(value).replace(reader, "<reader>").replace(app, "<app>")
                .replace(database, "<database>"))

    return {tuple(normal(v) for v in row) for row in rows}


def conninfo_database(conninfo: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(conninfo)["dbname"])


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


def test_the_converted_roles_sql_grants_what_psql_running_roles_sql_grants(
    pg_server: str, bootstrapped: Bootstrapped,
) -> None:
    """The same source, the same result: roles.sql run by psql (as `sagaz dev up` and
    docker-compose run it) and its conversion run by the operator leave the same privileges."""
    psql = shutil.which("psql")
    assert psql, "psql is needed (apt-get install postgresql-client)"
    suffix = os.urandom(3).hex()
    app, reader, database = f"psql_app_{suffix}", f"psql_reader_{suffix}", f"psql_db_{suffix}"
    replication = f"psql_repl_{suffix}"
    params = psycopg.conninfo.conninfo_to_dict(pg_server)
    script = resources.files("sagaz.deploy").joinpath("templates", "sql", "roles.sql")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PG")},
           "SAGAZ_APP_PASSWORD": "a" * 32, "SAGAZ_READER_PASSWORD": "r" * 32,
           "SAGAZ_REPLICATION_PASSWORD": "x" * 32}
    try:
        result = subprocess.run(
            [psql, "-X", "-q", "-h", str(params.get("host", "127.0.0.1")),
             "-p", str(params.get("port", 5432)), "-U", str(params.get("user", "postgres")),
             "-d", "postgres", "-v", f"app_user={app}", "-v", f"reader_user={reader}",
             "-v", f"replication_user={replication}", "-v", f"app_db={database}", "-f", "-"],
            input=script.read_text("utf-8"), env=env, capture_output=True, text=True,
            timeout=60)
        assert result.returncode == 0, result.stderr
        by_psql = _grants(dsn_for(database), app, reader)
    finally:
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(database)))
            for role in (reader, app, replication):
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    by_operator = _grants(bootstrapped.superuser_dsn, bootstrapped.app, bootstrapped.reader)
    assert by_operator == by_psql
    assert ("member", "<reader>", "pg_monitor") in by_psql  # the comparison compares something
    assert any(row[0] == "function" and "<app>=X" in row[2] for row in by_psql)


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
