"""What the PostgreSQL benchmarks share: the server to use and a scratch database on it."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ["DEFAULT_DSN", "default_dsn", "describe_server", "scratch_database"]

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def default_dsn() -> str:
    """``SAGAZ_BENCH_PG_DSN``, else ``SAGAZ_TEST_PG_DSN``, else the local trust-auth server."""
    return (os.environ.get("SAGAZ_BENCH_PG_DSN") or os.environ.get("SAGAZ_TEST_PG_DSN")
            or DEFAULT_DSN)


def describe_server(dsn: str) -> str:
    """host:port and user of ``dsn``; never its password."""
    params = conninfo_to_dict(dsn)
    return f"{params.get('host', 'localhost')}:{params.get('port', 5432)} as {params.get('user')}"


@contextmanager
def scratch_database(base_dsn: str, migrated: bool = False) -> Iterator[str]:
    """A new database on ``base_dsn``'s server (with the sagaz schema when ``migrated``),
    dropped afterwards whatever happens; yields its DSN."""
    name = f"sagaz_bench_{secrets.token_hex(6)}"
    ident = sql.Identifier(name)
    with psycopg.connect(base_dsn, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(ident))
    try:
        dsn = make_conninfo(base_dsn, dbname=name)
        if migrated:
            from sagaz.storage.postgresql.migrate import migrate

            with psycopg.connect(dsn, autocommit=True) as conn:
                migrate(conn)
        yield dsn
    finally:
        with psycopg.connect(base_dsn, autocommit=True, connect_timeout=5) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
