"""A PostgreSQL that cannot be reached, or that rejects the login, against the real thing: a
closed port on loopback, and a SCRAM cluster's real role with a wrong password. Both end in a
StorageError: the first after ``retry_timeout`` seconds of retries (it may heal), the second at
once (no retry fixes a password)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sagaz import Saga, SagaConfig, StorageError
from sagaz.storage.postgresql import PostgreSQLSagaStorage

if TYPE_CHECKING:
    from sagaz.ha.local import LocalCluster

WRONG_PASSWORD = "not-the-password-4711"


def closed_port() -> int:
    """A loopback port nothing listens on: connections to it are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _saga(storage: PostgreSQLSagaStorage) -> Saga:
    async def step(ctx: Any) -> None:
        return None

    return Saga(name="conn-errors", config=SagaConfig(storage=storage)).add_step("a", step)


async def test_an_unreachable_server_is_retried_for_retry_timeout_then_a_storage_error() -> None:
    port = closed_port()
    storage = PostgreSQLSagaStorage(f"postgresql://sagaz:{WRONG_PASSWORD}@127.0.0.1:{port}/app",
                                    retry_timeout=1.5)
    try:
        for operation in (storage.list_sagas, lambda: _saga(storage).run({})):
            started = time.monotonic()
            with pytest.raises(StorageError) as raised:
                await operation()
            elapsed = time.monotonic() - started
            # Retried (it may heal), but no longer than retry_timeout (the pool's own 30 s wait
            # used to win); generous slack for a loaded machine.
            assert 0.5 < elapsed < 10, elapsed
            message = str(raised.value)
            assert f"127.0.0.1:{port}/app unreachable" in message
            assert "Connection refused" in message and "retry_timeout" in message
            assert WRONG_PASSWORD not in message and "\n" not in message
            assert not raised.value.connection_rejected
            assert isinstance(raised.value.__cause__, psycopg.OperationalError)
    finally:
        await storage.close()


async def _forward(target: tuple[str, int], reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> None:
    upstream_reader, upstream_writer = await asyncio.open_connection(*target)

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.close()

    await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


async def test_a_server_that_comes_up_within_retry_timeout_is_waited_for(pg_dsn: str) -> None:
    """Connection refused can heal (a server starting): the first call waits for it."""
    params = conninfo_to_dict(pg_dsn)
    target = (str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))
    port = closed_port()

    async def open_later() -> asyncio.Server:
        await asyncio.sleep(1.0)
        return await asyncio.start_server(
            lambda r, w: _forward(target, r, w), "127.0.0.1", port)

    opening = asyncio.create_task(open_later())
    storage = PostgreSQLSagaStorage(make_conninfo(pg_dsn, host="127.0.0.1", port=port),
                                    retry_timeout=20)
    try:
        started = time.monotonic()
        result = await _saga(storage).execute({})
        assert result.status.value == "COMPLETED"
        assert 0.9 < time.monotonic() - started < 15
    finally:
        await storage.close()
        server = await opening
        server.close()


async def test_a_database_that_does_not_exist_fails_at_once(pg_server: str) -> None:
    async with PostgreSQLSagaStorage(make_conninfo(pg_server, dbname="sagaz_no_such_db"),
                                     retry_timeout=30) as storage:
        started = time.monotonic()
        with pytest.raises(StorageError, match="rejected the connection") as raised:
            await storage.count_by_status()
    assert time.monotonic() - started < 5
    assert raised.value.connection_rejected
    assert 'database "sagaz_no_such_db" does not exist' in str(raised.value)


@pytest.fixture(scope="module")
def cluster(local_cluster: LocalCluster) -> LocalCluster:
    return local_cluster


@pytest.mark.parametrize("through", ["direct", "pgbouncer"])
async def test_a_wrong_password_fails_at_once_and_says_so(
    cluster: LocalCluster, through: str
) -> None:
    port = cluster.state.rw_port if through == "pgbouncer" else None
    dsn = make_conninfo(cluster.dsn(port=port), password=WRONG_PASSWORD)
    async with PostgreSQLSagaStorage(dsn, retry_timeout=30) as storage:
        started = time.monotonic()
        with pytest.raises(StorageError) as raised:
            await _saga(storage).run({})
        elapsed = time.monotonic() - started
    assert elapsed < 5, elapsed  # not 30 s of retries
    message = str(raised.value)
    assert "rejected the connection" in message
    assert "authentication failed" in message  # PgBouncer says "SASL authentication failed"
    assert "check the user, password" in message
    assert WRONG_PASSWORD not in message
    assert raised.value.connection_rejected


async def test_the_right_password_works_on_the_same_cluster(cluster: LocalCluster) -> None:
    """The control of the test above: the role and the server are fine."""
    async with PostgreSQLSagaStorage(cluster.dsn(), retry_timeout=5) as storage:
        result = await _saga(storage).execute({})
    assert result.status.value == "COMPLETED"
