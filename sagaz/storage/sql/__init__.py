"""SQL lives in .sql files next to this module: numbered migrations per dialect and named queries
(``-- name: query_name`` headers), loaded once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

__all__ = ["MIGRATION_LOCK_KEY", "Migration", "migrations", "queries"]

MIGRATION_LOCK_KEY = int.from_bytes(b"sagazmig", "big")
"""The ``pg_advisory_xact_lock`` key serializing PostgreSQL migrations within one database: here,
not in the driver's module, because the generated deployments' init-schema.sh takes it too."""

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
_MIGRATION = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


@cache
def queries(dialect: str, group: str = "queries") -> dict[str, str]:
    """Named queries of ``<dialect>/<group>.sql`` (``queries.sql`` by default; a component with
    many queries of its own, such as the SQLite outbox, keeps them in a file of their own)."""
    text = resources.files(__package__).joinpath(dialect, f"{group}.sql").read_text("utf-8")
    parts = _NAME.split(text)
    found: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in found:
            raise RuntimeError(f"query {name!r} is defined twice in {dialect}/{group}.sql")
        found[name] = _without_trailing_comments(body).rstrip(";")
    return found


def _without_trailing_comments(body: str) -> str:
    """The query text without the comment lines after it: those head the next section of the
    file (e.g. "-- Maintenance ..."), they are not part of this query."""
    lines = body.strip().splitlines()
    while lines and (not lines[-1].strip() or lines[-1].lstrip().startswith("--")):
        lines.pop()
    return "\n".join(lines).strip()


@cache
def migrations(dialect: str) -> tuple[Migration, ...]:
    """The numbered migrations of ``<dialect>/migrations``, in order."""
    folder = resources.files(__package__).joinpath(dialect, "migrations")
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{dialect} migrations must be numbered 0001, 0002, ...: {versions}")
    return tuple(found)
