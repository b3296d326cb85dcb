"""After an outage the storage answers as soon as the server does, not when psycopg_pool's
reconnect backoff (1, 2, 4, 8 s ..., uncapped) next wakes up: the server is real, the outage is
a loopback forwarder in front of it that stops listening and drops its connections, then listens
again on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sagaz.storage.postgresql import PostgreSQLSagaStorage

OUTAGE = 10.0
"""The pool's attempts at ~0, 1, 3, 7 s (+-10 %) fail; its next comes at ~15 s, well after."""


class Forwarder:
    """Loopback port -> the real server; :meth:`stop` refuses and drops, :meth:`start` heals."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port,
                                                  reuse_address=True)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_the_storage_answers_soon_after_the_server_not_after_the_pool_backoff(
        pg_dsn: str) -> None:
    info = conninfo_to_dict(pg_dsn)
    forwarder = Forwarder(str(info.get("host", "127.0.0.1")), int(info.get("port", 5432)))
    await forwarder.start()
    storage = PostgreSQLSagaStorage(
        make_conninfo(pg_dsn, host="127.0.0.1", port=str(forwarder.port)),
        retry_timeout=60, auto_migrate=False)
    try:
        await storage.list_sagas()
        await forwarder.stop()
        calls = asyncio.create_task(_keep_calling(storage))
        await asyncio.sleep(OUTAGE)
        assert not calls.done()
        healed = time.monotonic()
        await forwarder.start()
        answered = await calls
        recovery = answered - healed
        # The pool was found waiting out its backoff and replaced; without that the first
        # answer would come with the pool's next attempt, about OUTAGE seconds after healing.
        assert (storage._pool.renewals, recovery < OUTAGE * 0.35) == (1, True), recovery
    finally:
        await storage.close()
        with contextlib.suppress(AssertionError):
            await forwarder.stop()


async def _keep_calling(storage: PostgreSQLSagaStorage) -> float:
    """Call the storage until a call succeeds (each call retries within retry_timeout)."""
    await storage.list_sagas()
    return time.monotonic()
