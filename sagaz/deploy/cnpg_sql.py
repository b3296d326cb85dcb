"""The bootstrap SQL of the CloudNativePG deployment, from the same sources as every other way to
run sagaz: ``templates/sql/roles.sql`` and the PostgreSQL migrations.

CloudNativePG runs the files that ``bootstrap.initdb.postInitApplicationSQLRefs`` names as the
superuser, in the application database, once, right after ``initdb``; as plain SQL, not through
psql. roles.sql is a psql script (variables, ``\\gexec``, ``\\connect``), so :func:`roles_sql`
converts it:

- psql variables become quoted literals (``:'name'``) and identifiers (``:"name"``);
- each ``SELECT ... \\gexec`` becomes a call of a temporary function that executes every column
  of every row in order, as ``\\gexec`` does;
- the meta-commands go (``\\connect`` too: every statement of roles.sql can run from inside the
  application database, which the operator has created already);
- what the operator does itself is left to it: every password (managed roles set them from their
  Secrets) and the replication role (it streams with its own ``streaming_replica`` role and
  client certificates). roles.sql keeps those in statements of their own for this reason.

:func:`schema_sql` applies the migrations as the application role (it owns its schema and its
tables, as after ``sagaz db migrate``) and records them in ``sagaz_migrations``, so the
application finds the schema current.
"""

from __future__ import annotations

import re
from importlib import resources

from sagaz.deploy.render import render
from sagaz.errors import SagazError
from sagaz.storage.sql import MIGRATION_LOCK_KEY, migrations

__all__ = ["roles_sql", "schema_sql"]

_LEFT_TO_THE_OPERATOR = {"app_password", "reader_password", "replication_password",
                         "replication_user"}
"""Variables whose statements the operator's own mechanisms replace (module docstring)."""
_NOT_DEPLOYED = {"monitor_user", "monitor_password"}
"""postgres_exporter's role: the Kubernetes deployment runs no postgres_exporter (the operator
exports each instance's metrics itself)."""
_DROPPED_META = ("\\set", "\\if", "\\else", "\\endif", "\\getenv", "\\connect")
_VARIABLE = re.compile(r""":(?P<quote>['"])(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P=quote)""")
_DOLLAR_TAG = "$sagaz_gexec$"


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _identifier(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _substitute(statement: str, variables: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in variables:
            raise SagazError(f"roles.sql uses the psql variable {name!r}, which "
                             "sagaz/deploy/cnpg_sql.py does not know: add it there")
        quote = _literal if match["quote"] == "'" else _identifier
        return quote(variables[name])

    return _VARIABLE.sub(replace, statement)


_GEXEC_FUNCTION = f"""\
-- What psql's \\gexec does: run each non-null column of each row of the query, left to right, as
-- a statement. row_to_json keeps the columns' order and duplicate names (format(...) columns
-- share one); json, not jsonb, which would reorder them. A temporary function: gone with the
-- session.
CREATE FUNCTION pg_temp.sagaz_gexec(query text) RETURNS void LANGUAGE plpgsql AS {_DOLLAR_TAG}
DECLARE
    result json;
    command text;
BEGIN
    FOR result IN EXECUTE 'SELECT row_to_json(q) FROM (' || query || ') AS q' LOOP
        FOR command IN SELECT value FROM json_each_text(result) LOOP
            IF command IS NOT NULL THEN
                EXECUTE command;
            END IF;
        END LOOP;
    END LOOP;
END
{_DOLLAR_TAG};
"""


def _gexec_call(query: str) -> str:
    if _DOLLAR_TAG in query:
        raise SagazError(f"roles.sql contains {_DOLLAR_TAG}, the quote cnpg_sql.py uses")
    return f"SELECT pg_temp.sagaz_gexec({_DOLLAR_TAG}\n{query.strip()}\n{_DOLLAR_TAG});"


def _statements(script: str) -> list[tuple[str, str]]:
    """roles.sql as (kind, text): "comment", "sql" (ends with ;) or "gexec" (without \\gexec)."""
    found: list[tuple[str, str]] = []
    pending: list[str] = []
    for line in script.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("--")):
            found.append(("comment", line))
            continue
        if not pending and stripped.startswith("\\"):
            if not stripped.startswith(_DROPPED_META):
                raise SagazError(f"roles.sql uses {stripped.split()[0]}, which "
                                 "sagaz/deploy/cnpg_sql.py cannot convert to plain SQL")
            continue
        pending.append(line)
        if stripped.endswith("\\gexec"):
            text = "\n".join(pending)
            found.append(("gexec", text[: text.rindex("\\gexec")].rstrip()))
            pending = []
        elif stripped.endswith(";"):
            found.append(("sql", "\n".join(pending)))
            pending = []
    if pending:
        raise SagazError("roles.sql ends inside a statement (no ; or \\gexec)")
    return found


def _roles_source() -> str:
    return resources.files("sagaz.deploy").joinpath("templates", "sql", "roles.sql").read_text(
        "utf-8")


def roles_sql(*, app_user: str, reader_user: str, database: str, schema: str = "public") -> str:
    """roles.sql as plain SQL for the operator (module docstring)."""
    variables = {"app_user": app_user, "reader_user": reader_user, "app_db": database,
                 "app_schema": schema}
    lines = ["-- Generated by `sagaz init --k8s` from sagaz/deploy/templates/sql/roles.sql (the",
             "-- file `sagaz dev up` and docker-compose run with psql), as plain SQL for",
             "-- CloudNativePG: each `SELECT ... \\gexec` is a call of pg_temp.sagaz_gexec;",
             "-- passwords and the replication role are the operator's (managed roles,",
             "-- streaming_replica).", "",
             _GEXEC_FUNCTION]
    for kind, text in _statements(_roles_source()):
        if kind == "comment":
            lines.append(text)
            continue
        used = {m["name"] for m in _VARIABLE.finditer(text)}
        if used & _NOT_DEPLOYED:
            continue
        if used & _LEFT_TO_THE_OPERATOR:
            left = ", ".join(sorted(used & _LEFT_TO_THE_OPERATOR))
            note = f"-- (left to the operator: {left})"
            if lines[-1] != note:
                lines.append(note)
            continue
        statement = _substitute(text, variables)
        lines.append(_gexec_call(statement) if kind == "gexec" else statement)
    return "\n".join(lines).rstrip() + "\n"


def schema_sql(*, app_user: str, schema: str = "public") -> str:
    """Every PostgreSQL migration, as the application role, recorded as ``sagaz db migrate``
    records them (one implicit transaction: CloudNativePG sends each file as one query)."""
    return render("k8s/bootstrap-schema.sql.j2", migrations=migrations("postgresql"),
                  lock_key=MIGRATION_LOCK_KEY, app_user=_identifier(app_user),
                  schema=_identifier(schema), literal=_literal)
