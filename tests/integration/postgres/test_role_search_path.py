"""The schema of sagaz's tables is a setting of the roles (roles.sql), so that a connection
through PgBouncer in transaction mode and a direct one land in the same schema. PgBouncer drops the
``options`` startup parameter: ``options=-c search_path=...`` in a URL reaches only direct
connections."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pg_fixtures import BASE_DSN, as_url
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sagaz import Saga, SagaConfig
from sagaz.ha.addresses import kernel_chosen_port
from sagaz.ha.pgbouncer import Backend, PgBouncer, PoolSettings
from sagaz.ha.postgres import find_bindir
from sagaz.storage.postgresql import PostgreSQLSagaStorage


@dataclass
class Deployment:
    """roles.sql applied to the test server under names of its own, a PgBouncer in front."""

    server: dict[str, Any]
    app_user: str
    reader_user: str
    app_db: str
    passwords: dict[str, str]
    bouncer: PgBouncer

    def direct(self, user: str, **extra: Any) -> str:
        return make_conninfo(BASE_DSN, user=user, password=self.passwords[user],
                             dbname=self.app_db, **extra)

    def pooled(self, user: str, **extra: Any) -> str:
        return make_conninfo(BASE_DSN, host="127.0.0.1", port=self.bouncer.port, user=user,
                             password=self.passwords[user], dbname=self.app_db, **extra)


def run_roles_sql(deployment: Deployment, *, schema: str | None) -> None:
    script = resources.files("sagaz.deploy").joinpath("templates", "sql", "roles.sql")
    server = deployment.server
    variables = {"app_user": deployment.app_user, "reader_user": deployment.reader_user,
                 "replication_user": f"{deployment.app_user}_repl",
                 "app_db": deployment.app_db}
    if schema is not None:
        variables["app_schema"] = schema
    argv = [str(find_bindir() / "psql"), "-X", "-q", "-h", str(server.get("host", "127.0.0.1")),
            "-p", str(server.get("port", 5432)), "-U", str(server.get("user", "postgres")),
            "-d", str(server.get("dbname", "postgres"))]
    for key, value in variables.items():
        argv += ["-v", f"{key}={value}"]
    env = {**os.environ, "SAGAZ_APP_PASSWORD": deployment.passwords[deployment.app_user],
           "SAGAZ_READER_PASSWORD": deployment.passwords[deployment.reader_user],
           "SAGAZ_REPLICATION_PASSWORD": secrets.token_urlsafe(12)}
    if server.get("password"):
        env["PGPASSWORD"] = str(server["password"])
    result = subprocess.run([*argv, "-f", "-"], input=script.read_text("utf-8"), env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def deployment(pg_server: str) -> Iterator[Deployment]:
    if shutil.which("pgbouncer") is None and not os.path.exists("/usr/sbin/pgbouncer"):
        pytest.fail("pgbouncer is not installed (apt-get install pgbouncer); .ci/run installs it",
                    pytrace=False)
    suffix = secrets.token_hex(4)
    app_user, reader_user = f"sagaz_sp_{suffix}", f"sagaz_sp_{suffix}_reader"
    app_db = f"sagaz_sp_{suffix}"
    passwords = {app_user: secrets.token_urlsafe(16), reader_user: secrets.token_urlsafe(16)}
    server = conninfo_to_dict(pg_server)
    # Not under pytest's tmp_path: that is private to root, and PgBouncer runs as postgres.
    directory = Path(tempfile.mkdtemp(prefix="sagaz-test-pgbouncer-"))
    bouncer = PgBouncer(
        directory, port=kernel_chosen_port(),
        backends=[Backend(app_db, str(server.get("host", "127.0.0.1")),
                          int(server.get("port", 5432)), app_db)],
        passwords=passwords, admin_user=app_user,
        settings=PoolSettings("transaction", max_client_conn=50, default_pool_size=2,
                              reserve_pool_size=0))
    found = Deployment(server, app_user, reader_user, app_db, passwords, bouncer)
    try:
        yield found
    finally:
        bouncer.stop(signal.SIGTERM)
        shutil.rmtree(directory, ignore_errors=True)
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(app_db)))
            for role in (app_user, reader_user, f"{app_user}_repl"):
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _schema(conninfo: str) -> str:
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None,
                         connect_timeout=5) as conn:
        row = conn.execute("SELECT current_schema()").fetchone()
    assert row is not None
    return str(row[0])


async def test_pooled_and_direct_connections_land_in_the_schema_roles_sql_sets(
    deployment: Deployment,
) -> None:
    run_roles_sql(deployment, schema="sagaz")
    run_roles_sql(deployment, schema="sagaz")  # idempotent
    deployment.bouncer.start()
    app, reader = deployment.app_user, deployment.reader_user
    assert _schema(deployment.direct(app)) == "sagaz"
    assert _schema(deployment.pooled(app)) == "sagaz"
    assert _schema(deployment.pooled(reader)) == "sagaz"
    # What the README used to advise reaches a direct connection only: PgBouncer drops it.
    assert _schema(deployment.direct(app, options="-c search_path=public")) == "public"
    assert _schema(deployment.pooled(app, options="-c search_path=public")) == "sagaz"

    # Migrated over the direct connection, used through the pool: the same tables.
    direct = PostgreSQLSagaStorage(as_url(deployment.direct(app)))
    pooled = PostgreSQLSagaStorage(as_url(deployment.pooled(app)), auto_migrate=False)
    try:
        saga = Saga(name="search-path", config=SagaConfig(storage=direct))
        saga.add_step("one", lambda ctx: {"one": True})
        await saga.run({})
        through_pool = Saga(name="search-path-pooled", config=SagaConfig(storage=pooled))
        through_pool.add_step("one", lambda ctx: {"one": True})
        await through_pool.run({})
    finally:
        await direct.close()
        await pooled.close()
    with psycopg.connect(deployment.direct(app), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM sagaz.saga_executions").fetchone()
        assert row == (2,)
        assert conn.execute("SELECT to_regclass('public.saga_executions')").fetchone() == (None,)


def test_without_app_schema_roles_sql_keeps_public(deployment: Deployment) -> None:
    run_roles_sql(deployment, schema=None)
    deployment.bouncer.start()
    assert _schema(deployment.direct(deployment.app_user)) == "public"
    assert _schema(deployment.pooled(deployment.app_user)) == "public"
