"""The one place where psycopg errors become :class:`~sagaz.errors.StorageError` (model:
procrastinate's ``wrap_exceptions``): which failures a retry can heal, and a one-line message
for the others that names the server, never the password.

libpq reports a failed connection without an SQLSTATE, so what cannot heal (wrong password, no
such role or database, no pg_hba.conf entry) is told by the server's message. Those messages are
English unless the server sets ``lc_messages`` otherwise; a message not recognised is treated as
transient, which costs ``retry_timeout`` seconds of retries, never a wrong answer.
"""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import PoolClosed, PoolTimeout

from sagaz.errors import StorageError

__all__ = ["is_transient", "reason", "server_label", "storage_error"]

# Parts of the messages of connection attempts that no retry can fix.
_REJECTED = (
    "password authentication failed",  # 28P01
    "authentication failed",  # ident, peer, gss, sspi, cert, ldap, radius
    "no password supplied",  # the server wants one, the URL has none
    "no pg_hba.conf entry",  # 28000
    "does not exist",  # role or database (28000, 3D000)
    "not permitted to log in",  # a role without LOGIN
    "does not have connect privilege",
    "permission denied for database",
    "server does not support ssl, but ssl was required",
    "invalid connection option",
)
_REJECTED_SQLSTATES = ("28", "3D")  # invalid authorization, invalid catalog name
# What the server refused to keep: a value or a constraint. The same write would fail again.
_REFUSED_DATA = (psycopg.DataError, psycopg.IntegrityError)


def server_label(dsn: str) -> str:
    """``host:port/dbname`` of a DSN (URL or key=value), for messages: never the password."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable dsn>"
    hosts = str(params.get("host") or params.get("hostaddr") or "localhost").split(",")
    ports = str(params.get("port") or "5432").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    where = ",".join(f"{h}:{p}" for h, p in zip(hosts, ports, strict=False))
    dbname = params.get("dbname") or params.get("user")
    return f"{where}/{dbname}" if dbname else where


def rejects_connection(exc: BaseException) -> bool:
    """Whether the server turned the connection down for good (credentials, role, database)."""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    if exc.sqlstate is not None:
        return exc.sqlstate[:2] in _REJECTED_SQLSTATES
    text = str(exc).lower()
    return any(part in text for part in _REJECTED)


def is_transient(exc: BaseException) -> bool:
    """Whether trying again may succeed: a lost or refused connection (restart, failover,
    killed backend), a server starting up or in recovery, too many clients, no free connection
    in the pool. Never a rejected login, never a refused value."""
    if isinstance(exc, PoolTimeout | psycopg.errors.ReadOnlySqlTransaction):
        return True
    if isinstance(exc, PoolClosed):
        return False  # the storage was closed: a retry would open a pool nobody closes
    return isinstance(exc, psycopg.OperationalError) and not rejects_connection(exc)


def reason(exc: BaseException, dsn: str) -> str:
    """The driver's message on one line, without the server's query excerpt or the DSN's
    password, should it ever contain it."""
    primary = exc.diag.message_primary if isinstance(exc, psycopg.Error) else None
    text = " ".join((primary or str(exc)).split()) or type(exc).__name__
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        password = None
    return text.replace(str(password), "***") if password else text


def storage_error(exc: BaseException, dsn: str, *, waited: float | None = None) -> StorageError:
    """The :class:`StorageError` for a driver error; ``waited`` is how long connection errors
    were retried before giving up on them."""
    where, why = server_label(dsn), reason(exc, dsn)
    if rejects_connection(exc):
        return StorageError(
            f"PostgreSQL at {where} rejected the connection ({why}); check the user, password "
            "and database name of the storage URL (a retry cannot fix this)",
            connection_rejected=True)
    if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
        return StorageError(
            f"PostgreSQL at {where} is read-only (a standby, or default_transaction_read_only) "
            f"for {waited or 0:.1f}s: point the storage URL at the primary, e.g. with "
            "target_session_attrs=read-write")
    if isinstance(exc, PoolClosed):
        return StorageError(
            f"the storage on {where} was closed while this operation waited for a connection")
    if isinstance(exc, PoolTimeout):
        return StorageError(
            f"no free connection to PostgreSQL at {where} within {waited or 0:.1f}s: every "
            "connection of the pool is busy; raise max_size or lower the concurrency")
    if isinstance(exc, psycopg.OperationalError):
        return StorageError(
            f"PostgreSQL at {where} unreachable for {waited or 0:.1f}s ({why}); start it, fix the "
            "host and port of the storage URL, or raise retry_timeout")
    if isinstance(exc, _REFUSED_DATA):
        return StorageError(f"PostgreSQL at {where} refused the write: {why}", refused=True)
    return StorageError(f"PostgreSQL error on {where}: {why}")
