"""How driver errors are classified and worded (sagaz.storage.postgresql.errors)."""

import psycopg
import pytest
from psycopg_pool import PoolClosed, PoolTimeout

from sagaz.storage.postgresql.errors import is_transient, storage_error

DSN = "postgresql://app:hunter2-secret@db.internal:6432/orders"
REFUSED = ('connection failed: connection to server at "10.0.0.5", port 6432 failed: '
           "Connection refused\n\tIs the server running on that host?")


@pytest.mark.parametrize("message", [
    'connection failed: ...: FATAL:  password authentication failed for user "app"',
    "connection failed: ...: FATAL:  SASL authentication failed",
    'connection failed: ...: FATAL:  role "app" does not exist',
    'connection failed: ...: FATAL:  database "orders" does not exist',
    'connection failed: ...: FATAL:  no pg_hba.conf entry for host "10.0.0.9", user "app"',
    "connection failed: fe_sendauth: no password supplied",
])
def test_rejected_logins_are_not_retried(message: str) -> None:
    exc = psycopg.OperationalError(message)
    assert not is_transient(exc)
    error = storage_error(exc, DSN)
    assert error.connection_rejected and not error.refused
    assert str(error).startswith("PostgreSQL at db.internal:6432/orders rejected the connection")


@pytest.mark.parametrize("exc", [
    psycopg.OperationalError(REFUSED),
    psycopg.OperationalError("connection failed: FATAL:  the database system is starting up"),
    psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly"),
    PoolTimeout("couldn't get a connection after 30.00 sec"),
])
def test_what_can_heal_is_retried(exc: psycopg.Error) -> None:
    assert is_transient(exc)


def test_messages_are_one_line_and_never_hold_the_password() -> None:
    error = storage_error(psycopg.OperationalError(REFUSED + " hunter2-secret"), DSN, waited=2.04)
    text = str(error)
    assert "\n" not in text and "hunter2-secret" not in text
    assert text.startswith("PostgreSQL at db.internal:6432/orders unreachable for 2.0s (")
    assert "Connection refused" in text and not error.connection_rejected


def test_refused_values_and_a_closed_storage() -> None:
    refused = storage_error(psycopg.errors.CheckViolation("new row violates check"), DSN)
    assert refused.refused and not is_transient(psycopg.errors.CheckViolation())
    assert not is_transient(PoolClosed("closed"))
    assert "was closed" in str(storage_error(PoolClosed("closed"), DSN))
