"""Fixtures for tests against a real PostgreSQL (a pytest plugin, loaded by tests/conftest.py, so
that tests/integration/postgres and tests/acceptance share them).

The server comes from ``SAGAZ_TEST_PG_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``,
the maintenance database of a local server with trust auth). Per session one template database
``sagaz_test_template_<random>`` gets the migrations once; every test gets its own database cloned
from it (``CREATE DATABASE ... TEMPLATE``, a file copy: much faster than migrating again) and
dropped afterwards. A server that cannot be reached fails the tests; it never skips them.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

BASE_DSN = os.environ.get(
    "SAGAZ_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)

_HOW_TO_START = """\
PostgreSQL is needed for tests/integration/postgres and is not reachable at {where}: {error}
Start it, e.g. on Debian:  pg_ctlcluster 15 main start   (or: service postgresql start)
or point the tests at a server (a superuser, or a role with CREATEDB):
    SAGAZ_TEST_PG_DSN=postgresql://user@host:5432/postgres"""


def dsn_for(database: str) -> str:
    """``SAGAZ_TEST_PG_DSN`` with another database name."""
    return make_conninfo(BASE_DSN, dbname=database)


def as_url(dsn: str) -> str:
    """A ``postgresql://`` URL for a DSN of these fixtures (they are key=value strings): the form
    SAGAZ_STORAGE_URL requires."""
    params = conninfo_to_dict(dsn)
    user = quote(str(params.get("user") or ""), safe="")
    password = params.get("password")
    auth = f"{user}:{quote(str(password), safe='')}@" if password else (f"{user}@" if user else "")
    host = params.get("host") or "localhost"
    port = params.get("port") or 5432
    return f"postgresql://{auth}{host}:{port}/{quote(str(params['dbname']), safe='')}"


def _describe_server() -> str:
    params = conninfo_to_dict(BASE_DSN)
    # Never print a password.
    return f"{params.get('host', 'localhost')}:{params.get('port', 5432)} as {params.get('user')}"


def _admin() -> psycopg.Connection[TupleRow]:
    return psycopg.connect(BASE_DSN, autocommit=True, connect_timeout=5)


def _create_database(name: str, template: str) -> None:
    with _admin() as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )


def _drop_database(name: str) -> None:
    with _admin() as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The base DSN, once the server answered. Fails (in CI and elsewhere) when it does not."""
    try:
        with _admin() as admin:
            admin.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        message = _HOW_TO_START.format(where=_describe_server(), error=str(exc).strip())
        if os.environ.get("CI") == "true":
            message = "CI=true: " + message
        pytest.fail(message, pytrace=False)
    return BASE_DSN


@pytest.fixture(scope="session")
def pg_template(pg_server: str) -> Iterator[str]:
    """Name of a database holding the full schema (all migrations applied), used as a template."""
    # Imported here, not at the top: this plugin loads for every test, the unit tests included.
    from sagaz.storage.postgresql.migrate import migrate

    name = f"sagaz_test_template_{secrets.token_hex(4)}"
    _create_database(name, "template0")
    try:
        with psycopg.connect(dsn_for(name), autocommit=True) as conn:
            migrate(conn)
        yield name
    finally:
        _drop_database(name)


@pytest.fixture
def pg_dsn(pg_template: str) -> Iterator[str]:
    """DSN of a fresh database with the full schema, dropped after the test."""
    name = f"sagaz_test_{secrets.token_hex(6)}"
    _create_database(name, pg_template)
    try:
        yield dsn_for(name)
    finally:
        _drop_database(name)


@pytest.fixture(scope="module")
def pg_readonly_conn(pg_template: str) -> Iterator[psycopg.Connection[TupleRow]]:
    """A read-only autocommit connection to a database with the full schema, shared by the tests
    of one module: for tests that only inspect the schema (each fresh database costs ~0.3 s)."""
    name = f"sagaz_test_{secrets.token_hex(6)}"
    _create_database(name, pg_template)
    try:
        with psycopg.connect(dsn_for(name), autocommit=True) as conn:
            conn.execute("SET default_transaction_read_only = on")
            yield conn
    finally:
        _drop_database(name)


@pytest.fixture
def pg_empty_dsn(pg_server: str) -> Iterator[str]:
    """DSN of a fresh, empty database (no migrations), dropped after the test."""
    name = f"sagaz_test_{secrets.token_hex(6)}"
    _create_database(name, "template0")
    try:
        yield dsn_for(name)
    finally:
        _drop_database(name)


@pytest.fixture
def pg_conn(pg_dsn: str) -> Iterator[psycopg.Connection[TupleRow]]:
    """An autocommit connection to :func:`pg_dsn`."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def wait_for_lock_waiters() -> Callable[[psycopg.Connection[TupleRow], int], None]:
    """``wait(conn, n)``: returns once ``n`` sessions wait for an advisory lock (fails after 10 s).

    Lets a test hold a lock, start competitors, and release them only once all of them queue.
    """

    def wait(conn: psycopg.Connection[TupleRow], count: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ).fetchone()
            if row is not None and row[0] >= count:
                return
            time.sleep(0.02)
        raise AssertionError(f"expected {count} sessions waiting on an advisory lock")

    return wait
