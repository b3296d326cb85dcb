"""Apply the numbered PostgreSQL migrations of ``sagaz/storage/sql/postgresql/migrations``.

Each pending migration runs in its own transaction which first takes a transaction-scoped advisory
lock (:data:`MIGRATION_LOCK_KEY`) and then re-reads ``sagaz_migrations``: any number of processes
may call :func:`migrate` at once; each migration is applied exactly once and every caller returns
when the schema is current. Objects are created in the connection's current schema (the first
existing schema of ``search_path``), where ``sagaz_migrations`` is kept too.

Use a direct connection (not PgBouncer in transaction mode): the migrations contain multi-statement
scripts and DDL that must not be split across server connections.

Before a migration runs, every table, index, type or function it creates that no earlier migration
made is looked up: if one exists already, it was not made by sagaz (or its migration would be
recorded), so :func:`migrate`
stops with a :class:`~sagaz.errors.StorageError` naming the objects instead of failing half-way
or silently adopting a table of another shape.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row

from sagaz.errors import StorageError
from sagaz.storage.sql import MIGRATION_LOCK_KEY, Migration, migrations

__all__ = ["MIGRATION_LOCK_KEY", "migrate", "migrate_async"]

logger = logging.getLogger(__name__)

DIALECT = "postgresql"


# The migration machinery's own SQL. It is the bootstrap of the named-query files, not one of
# them: it must work before anything else of the schema exists.
_BEGIN = b"SET TRANSACTION ISOLATION LEVEL READ COMMITTED"  # a waiter must see what was applied
_LOCK = b"SELECT pg_advisory_xact_lock(%s)"
_SCHEMA = b"SELECT current_schema()"
# current_schema() is a bare name and ::regnamespace parses an identifier: hence quote_ident.
_TABLE_SHAPE = b"""
SELECT c.relkind::text, a.attname::text, format_type(a.atttypid, a.atttypmod)
FROM pg_class c
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relnamespace = quote_ident(current_schema())::regnamespace
  AND c.relname = 'sagaz_migrations'
ORDER BY a.attnum
"""
_CREATE_TABLE = b"""
CREATE TABLE sagaz_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
_APPLIED = b"SELECT version, name FROM sagaz_migrations ORDER BY version"
_RECORD = b"INSERT INTO sagaz_migrations (version, name) VALUES (%s, %s)"
_EXISTING = b"""
SELECT c.relname::text,
       CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned table'
                      WHEN 'i' THEN 'index' WHEN 'I' THEN 'partitioned index'
                      WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view'
                      WHEN 'm' THEN 'materialized view' WHEN 'c' THEN 'composite type'
                      WHEN 'f' THEN 'foreign table' ELSE 'relation' END
FROM pg_class c
WHERE c.relnamespace = quote_ident(current_schema())::regnamespace
  AND c.relname = ANY(%(relations)s)
UNION ALL
SELECT t.typname::text, 'type'
FROM pg_type t
WHERE t.typnamespace = quote_ident(current_schema())::regnamespace
  AND t.typrelid = 0
  AND t.typname = ANY(%(relations)s)
UNION ALL
SELECT p.oid::regprocedure::text, 'function'
FROM pg_proc p
WHERE p.pronamespace = quote_ident(current_schema())::regnamespace
  AND p.proname = ANY(%(functions)s)
ORDER BY 1
"""

_EXPECTED_SHAPE = [
    ("version", "integer"),
    ("name", "text"),
    ("applied_at", "timestamp with time zone"),
]

# What a migration script creates at top level. Comments and dollar-quoted bodies (functions, DO
# blocks) are removed first: the DDL they contain runs later, on names they compute.
_COMMENT = re.compile(r"--[^\n]*")
_DOLLAR_QUOTED = re.compile(r"\$(\w*)\$.*?\$\1\$", re.DOTALL)
_CREATES_RELATION = re.compile(
    r"\bCREATE\s+(?:UNLOGGED\s+)?(?:UNIQUE\s+)?(?:TABLE|INDEX|SEQUENCE|VIEW|TYPE"
    r"|MATERIALIZED\s+VIEW)\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?(\w+)\b",
    re.IGNORECASE,
)
# Constraints with an index (primary key, unique, exclusion) name that index too.
_CREATES_INDEX_CONSTRAINT = re.compile(
    r"\bCONSTRAINT\s+(\w+)\s+(?:PRIMARY\s+KEY|UNIQUE|EXCLUDE)\b", re.IGNORECASE
)
_CREATES_FUNCTION = re.compile(
    r"\bCREATE\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|PROCEDURE)\s+(\w+)\s*\(", re.IGNORECASE
)


def created_objects(script: str) -> tuple[list[str], list[str]]:
    """The relation (table, index, sequence, view, type) and function names ``script`` creates."""
    text = _DOLLAR_QUOTED.sub("", _COMMENT.sub("", script))
    relations = sorted(
        {m.lower() for m in _CREATES_RELATION.findall(text)}
        | {m.lower() for m in _CREATES_INDEX_CONSTRAINT.findall(text)}
    )
    functions = sorted({m.lower() for m in _CREATES_FUNCTION.findall(text)})
    return relations, functions


def migrate(conn: psycopg.Connection[Any]) -> list[int]:
    """Apply the pending migrations on ``conn``; return the versions this call applied, in order.

    ``conn`` must not be inside a transaction; each migration commits on its own.
    """
    _require_idle(conn.info.transaction_status)
    applied: list[int] = []
    # tuple rows whatever row_factory the caller's connection has.
    with conn.cursor(row_factory=tuple_row) as cur:
        for migration in migrations(DIALECT):
            with conn.transaction():
                cur.execute(_BEGIN)
                cur.execute(_LOCK, (MIGRATION_LOCK_KEY,))
                schema = _schema(cur.execute(_SCHEMA).fetchone())
                if _needs_table(schema, cur.execute(_TABLE_SHAPE).fetchall()):
                    cur.execute(_CREATE_TABLE)
                if _is_recorded(migration, cur.execute(_APPLIED).fetchall()):
                    continue
                existing = cur.execute(_EXISTING, _created_params(migration)).fetchall()
                _refuse_conflicts(migration, schema, existing)
                try:
                    # Bytes and no parameters: sent as one simple-protocol script, "%" left alone.
                    cur.execute(migration.sql.encode("utf-8"))
                except psycopg.Error as exc:
                    raise _failed(migration, exc) from exc
                cur.execute(_RECORD, (migration.version, migration.name))
            _log_applied(migration, schema)
            applied.append(migration.version)
    return applied


async def migrate_async(conn: psycopg.AsyncConnection[Any]) -> list[int]:
    """:func:`migrate` for an async connection."""
    _require_idle(conn.info.transaction_status)
    applied: list[int] = []
    async with conn.cursor(row_factory=tuple_row) as cur:
        for migration in migrations(DIALECT):
            async with conn.transaction():
                await cur.execute(_BEGIN)
                await cur.execute(_LOCK, (MIGRATION_LOCK_KEY,))
                schema = _schema(await (await cur.execute(_SCHEMA)).fetchone())
                if _needs_table(schema, await (await cur.execute(_TABLE_SHAPE)).fetchall()):
                    await cur.execute(_CREATE_TABLE)
                if _is_recorded(migration, await (await cur.execute(_APPLIED)).fetchall()):
                    continue
                params = _created_params(migration)
                existing = await (await cur.execute(_EXISTING, params)).fetchall()
                _refuse_conflicts(migration, schema, existing)
                try:
                    await cur.execute(migration.sql.encode("utf-8"))
                except psycopg.Error as exc:
                    raise _failed(migration, exc) from exc
                await cur.execute(_RECORD, (migration.version, migration.name))
            _log_applied(migration, schema)
            applied.append(migration.version)
    return applied


def _created_params(migration: Migration) -> dict[str, list[str]]:
    """The objects ``migration`` creates that no earlier sagaz migration made: those, if found,
    belong to someone else. What an earlier migration made (applied before this one: they run in
    order) a later one may replace, e.g. with CREATE OR REPLACE FUNCTION."""
    relations, functions = created_objects(migration.sql)
    ours_relations: set[str] = set()
    ours_functions: set[str] = set()
    for earlier in migrations(DIALECT):
        if earlier.version >= migration.version:
            break
        made_relations, made_functions = created_objects(earlier.sql)
        ours_relations.update(made_relations)
        ours_functions.update(made_functions)
    return {"relations": [r for r in relations if r not in ours_relations],
            "functions": [f for f in functions if f not in ours_functions]}


def _failed(migration: Migration, exc: psycopg.Error) -> StorageError:
    return StorageError(
        f"migration {_label(migration)} failed and was rolled back: {exc}".rstrip()
    )


def _require_idle(status: TransactionStatus) -> None:
    if status != TransactionStatus.IDLE:
        raise StorageError(
            f"migrate() needs a connection outside any transaction (status {status.name}): "
            "each migration commits on its own; commit or roll back first"
        )


def _schema(row: Sequence[Any] | None) -> str:
    if row is None or row[0] is None:
        raise StorageError(
            "no schema of the connection's search_path exists: create it, or set search_path "
            "(e.g. options='-c search_path=sagaz') to an existing schema"
        )
    return str(row[0])


def _needs_table(schema: str, shape: Iterable[Sequence[Any]]) -> bool:
    """True when ``sagaz_migrations`` is missing; error when a table of that name is not ours."""
    rows = list(shape)
    if not rows:
        return True
    kinds = {row[0] for row in rows}
    columns = [(row[1], row[2]) for row in rows if row[1] is not None]
    if kinds != {"r"} or columns != _EXPECTED_SHAPE:
        found = ", ".join(f"{name} {type_}" for name, type_ in columns) or "no columns"
        raise StorageError(
            f'"{schema}".sagaz_migrations exists but was not created by sagaz (it has {found}; '
            f"expected {', '.join(f'{n} {t}' for n, t in _EXPECTED_SHAPE)}). Rename or drop it, "
            "or run sagaz in another database or schema (search_path)"
        )
    return False


def _is_recorded(migration: Migration, rows: Iterable[Sequence[Any]]) -> bool:
    recorded = {int(version): str(name) for version, name in rows}
    name = recorded.get(migration.version)
    if name is None:
        return False
    if name != migration.name:
        raise StorageError(
            f"sagaz_migrations records version {migration.version} as {name!r}, but this sagaz "
            f"ships {_label(migration)}: the database was migrated by another sagaz version or "
            "another project; use a matching sagaz or another database"
        )
    return True


def _refuse_conflicts(
    migration: Migration, schema: str, existing: Iterable[Sequence[Any]]
) -> None:
    found = [f'{kind} "{schema}".{name}' for name, kind in existing]
    if found:
        raise StorageError(
            f"cannot apply migration {_label(migration)}: {', '.join(found)} already "
            f"exist{'s' if len(found) == 1 else ''} but {'was' if len(found) == 1 else 'were'} "
            "not created by sagaz (sagaz_migrations has no record of this migration). "
            "Rename or drop the conflicting objects if they are leftovers, or point sagaz at "
            "another database or schema (search_path, e.g. options='-c search_path=sagaz')"
        )


def _label(migration: Migration) -> str:
    return f"{migration.version:04d}_{migration.name}"


def _log_applied(migration: Migration, schema: str) -> None:
    logger.info(
        "applied migration %s in schema %s", _label(migration), schema,
        extra={"action": "migration_applied", "version": migration.version, "schema": schema},
    )
