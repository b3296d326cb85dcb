"""The storage's connection pool: one per event loop, and renewed after an outage.

psycopg_pool retries a failed connection in the background with a delay that doubles without a
cap (1, 2, 4, 8, 16 s ...) until ``reconnect_timeout``; it offers no bound on that delay. After a
failover that lasted ~20 s the pool may so sleep 16 s more while the new primary already answers.
:meth:`StoragePool.timed_out` tells that case apart: a caller that waited :data:`PROBE_AFTER`
seconds in vain connects once itself; if that works and the pool had failed to connect since it
was last looked at, the pool is in backoff and is replaced by a fresh one (the old one closes in
the background). A pool that is merely busy is kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

__all__ = ["CONNECT_KWARGS", "PROBE_AFTER", "StoragePool"]

logger = logging.getLogger(__name__)

_Conn = psycopg.AsyncConnection[Any]
# No server-side prepared statements (PgBouncer in transaction mode); a dead host fails in 5 s.
CONNECT_KWARGS: dict[str, Any] = {"prepare_threshold": None, "connect_timeout": 5}
PROBE_AFTER = 1.0
"""Seconds a caller waits for a pooled connection before asking the server itself."""


class StoragePool:
    """An :class:`AsyncConnectionPool` per event loop (each ``asyncio.run`` gets a new one),
    opened once however many callers arrive together, with ``first_use`` (migrations) run on
    the first connection."""

    def __init__(self, dsn: str, *, min_size: int, max_size: int, name: str,
                 configure: Callable[[_Conn], Awaitable[None]],
                 first_use: Callable[[_Conn], Awaitable[None]]):
        self.dsn = dsn
        self.min_size = min_size
        self.max_size = max_size
        self.name = name
        self._configure = configure
        self._first_use = first_use
        self.pool: AsyncConnectionPool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._retired: set[asyncio.Task[None]] = set()
        self.renewals = 0
        """How many times a pool in backoff was replaced (observability, tests)."""

    async def get(self) -> AsyncConnectionPool:
        loop = asyncio.get_running_loop()
        if self.pool is not None and self._loop is loop:
            return self.pool
        # A pool opened per caller would leak its worker tasks.
        if self._opening is None or self._opening[0] is not loop:
            self._opening = (loop, asyncio.Lock())
        async with self._opening[1]:
            if self.pool is None or self._loop is not loop:
                self.pool, self._loop = await self._open(), loop
        return self.pool

    async def _open(self) -> AsyncConnectionPool:
        # The first connection is ours, not the pool's: a pool retries a failed connection in
        # the background (logging each attempt) and only says PoolTimeout, while this attempt
        # raises the server's answer at once, which tells a rejected login from a server away.
        conn = await self.connect()
        try:
            await self._first_use(conn)
        finally:
            await conn.close()
        return await self._new_pool()

    async def _new_pool(self) -> AsyncConnectionPool:
        pool = AsyncConnectionPool(
            self.dsn, min_size=self.min_size, max_size=self.max_size, open=False,
            kwargs=CONNECT_KWARGS, configure=self._configure, name=self.name)
        await pool.open()
        pool.pop_stats()  # counters from here on: timed_out reads the errors since then
        return pool

    async def connect(self) -> _Conn:
        """A connection of our own, configured like the pool's."""
        conn = await psycopg.AsyncConnection.connect(self.dsn, **CONNECT_KWARGS)
        try:
            await self._configure(conn)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def timed_out(self, pool: AsyncConnectionPool, exc: PoolTimeout) -> psycopg.Error:
        """What kept ``pool`` from handing out a connection: the server's answer to a connection
        attempt of our own, or, if that succeeds, the pool timeout itself (busy, or in backoff:
        then the pool is renewed, so the next attempt gets a connection at once)."""
        try:
            conn = await self.connect()
        except psycopg.Error as error:
            return error
        await conn.close()
        failed = pool.pop_stats().get("connections_errors", 0)
        if failed and pool is self.pool:
            self.pool = await self._new_pool()
            self.renewals += 1
            logger.info("connection pool %s was waiting out its reconnect backoff while the "
                        "server answers: replaced it", self.name,
                        extra={"action": "pg_pool_renewed", "failed_connects": failed})
            task = asyncio.get_running_loop().create_task(pool.close())
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
        return exc

    def replaced(self, pool: AsyncConnectionPool) -> bool:
        """Whether ``pool`` was retired by a renewal (its waiters see PoolClosed: retry)."""
        return self.pool is not None and pool is not self.pool

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        pool, self.pool = self.pool, None
        if pool is not None and self._loop is loop:
            await pool.close()
        # A pool of an event loop that has ended had its tasks cancelled with that loop.
        if retired := [task for task in self._retired if task.get_loop() is loop]:
            await asyncio.gather(*retired, return_exceptions=True)
