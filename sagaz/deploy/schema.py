"""The schema files of a deployment, from the PostgreSQL migrations sagaz ships (one source):

    partitioning/001_create_partitioned_tables.sql      migration 0001, verbatim
    partitioning/002_partition_maintenance_functions.sql migration 0002 without its last statement
    partitioning/003_initial_partitions.sql             that statement: the initial partitions
    partitioning/migrations/NNNN_<name>.sql              later migrations, verbatim

and ``init-schema.sh``, which applies them with psql exactly as ``sagaz db migrate`` would: under
the same advisory lock, each migration once, recorded in ``sagaz_migrations``, so the application
(and ``sagaz db migrate``) later finds the schema current instead of failing on existing tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from sagaz.deploy.bundle import GeneratedFile
from sagaz.deploy.render import render
from sagaz.storage.sql import MIGRATION_LOCK_KEY, Migration, migrations

__all__ = [
    "INITIAL_PARTITIONS", "SchemaFile", "generated_schema_files", "init_schema_script",
    "initial_partitions", "schema_files",
]

# The statement migration 0002 ends with; 003 runs it in the form that shows what it did.
_LAST_STATEMENT_OF_0002 = "SELECT count(*) FROM maintain_all_partitions();"
INITIAL_PARTITIONS = "SELECT * FROM maintain_all_partitions();"

_NAMES = {1: "001_create_partitioned_tables.sql", 2: "002_partition_maintenance_functions.sql"}


@dataclass(frozen=True)
class SchemaFile:
    migration: Migration
    path: str
    content: str


def _split_0002(sql: str) -> str:
    """Migration 0002 up to (without) its final statement and the comment lines right above it."""
    body = sql.rstrip()
    if not body.endswith(_LAST_STATEMENT_OF_0002):
        raise RuntimeError(
            "migration 0002 no longer ends with the initial-partition statement "
            f"{_LAST_STATEMENT_OF_0002!r}: update sagaz/deploy/schema.py")
    lines = body[: -len(_LAST_STATEMENT_OF_0002)].rstrip().splitlines()
    while lines and lines[-1].startswith("--"):
        lines.pop()
    return ("\n".join(lines).rstrip() + "\n\n\n-- The initial partitions are created by "
            "003_initial_partitions.sql (sagaz init split them off this migration).\n")


def schema_files() -> list[SchemaFile]:
    found = []
    for migration in migrations("postgresql"):
        if migration.version == 1:
            content = migration.sql
        elif migration.version == 2:
            content = _split_0002(migration.sql)
        else:
            found.append(SchemaFile(
                migration, f"partitioning/migrations/{migration.version:04d}_{migration.name}.sql",
                migration.sql))
            continue
        found.append(SchemaFile(migration, f"partitioning/{_NAMES[migration.version]}", content))
    return found


def initial_partitions() -> str:
    return ("-- The current and upcoming partitions of every partitioned table (idempotent: run it "
            "any time;\n-- maintenance creates the later ones). One row per action.\n"
            + INITIAL_PARTITIONS + "\n")


def init_schema_script() -> str:
    return render("scripts/init-schema.sh.j2", files=schema_files(),
                  lock_key=MIGRATION_LOCK_KEY)


def generated_schema_files() -> list[GeneratedFile]:
    """Everything init-schema.sh reads, plus the script itself (paths relative to it)."""
    files = [GeneratedFile(f.path, f.content) for f in schema_files()]
    files.append(GeneratedFile("partitioning/003_initial_partitions.sql", initial_partitions()))
    files.append(GeneratedFile("init-schema.sh", init_schema_script(), 0o755))
    return files
