"""Redis Streams through redis.asyncio: one stream, one consumer group per consumer name.

Publishing is one XADD per event, all of a batch in one pipeline (one round trip). A consumer
reads with XREADGROUP and XACKs after its handler returned; an entry whose handler raised stays in
the group's pending list and is taken back with XAUTOCLAIM once it has been idle ``claim_idle``
seconds (which also recovers the entries of a consumer that died). A new group starts at the
beginning of the stream, so it sees everything the stream still holds (``maxlen`` bounds that).

Durability is Redis's: an XADD reply means the entry is in memory and in the AOF as configured
(``appendfsync``); configure Redis persistence to match what the outbox promises.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from sagaz.outbox.brokers import (
    Backoff,
    BrokerConnectionError,
    consume_with_reconnect,
    first_or_stop,
    log_malformed,
    redact_url,
    run_handler,
)
from sagaz.outbox.brokers.base import EventHandler
from sagaz.outbox.event import OutboxEvent

__all__ = ["RedisStreamsBroker"]

logger = logging.getLogger(__name__)

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    ConnectionError,
    OSError,
)

Entry = tuple[bytes, dict[bytes, bytes] | None]


class RedisStreamsBroker:
    """Publishes to the stream ``stream`` on ``url``."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        stream: str = "sagaz.events",
        maxlen: int | None = None,
        *,
        claim_idle: float = 30.0,
        block: float = 1.0,
        consumer_id: str | None = None,
        client_name: str = "sagaz",
        reconnect_max_delay: float = 5.0,
    ) -> None:
        self.url = url
        self.stream = stream
        self.maxlen = maxlen
        self.claim_idle = claim_idle
        """Seconds an entry stays pending (its handler raised, or its consumer died) before
        it is claimed again and redelivered."""
        self.block = block
        self.consumer_id = consumer_id or (
            f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.client_name = client_name
        self.reconnect_max_delay = reconnect_max_delay
        self._client: aioredis.Redis | None = None
        self._scripts: dict[int, Any] = {}
        self._consumer_clients: set[aioredis.Redis] = set()

    def __repr__(self) -> str:
        return f"RedisStreamsBroker({redact_url(self.url)!r}, stream={self.stream!r})"

    def _new_client(self) -> aioredis.Redis:
        client: aioredis.Redis = aioredis.from_url(
            self.url, decode_responses=False, client_name=self.client_name)
        return client

    async def connect(self) -> None:
        if self._client is None:
            self._client = self._new_client()
        try:
            await self._client.ping()
        except _CONNECTION_ERRORS as exc:
            raise BrokerConnectionError(
                "redis", f"cannot connect to {redact_url(self.url)}: {exc}") from exc

    def _script(self, client: aioredis.Redis) -> Any:
        """The batch script bound to ``client``. Script objects load themselves (EVALSHA, then
        SCRIPT LOAD on NOSCRIPT), so a restarted Redis that lost its script cache is fine."""
        script = self._scripts.get(id(client))
        if script is None:
            self._scripts = {id(client): client.register_script(_ADD_BATCH)}
            script = self._scripts[id(client)]
        return script

    async def publish_batch(self, events: Sequence[OutboxEvent]) -> list[BaseException | None]:
        if not events:
            return []
        if self._client is None:
            await self.connect()
        assert self._client is not None
        # One EVALSHA adds the whole batch: packing and parsing one command instead of one per
        # event is what the client's CPU spends (measured: ~270,000 XADDs/s through the script
        # against ~65,000/s through a pipeline of XADDs, 500 per batch). A script runs
        # atomically; a batch of 500 holds Redis for about a millisecond.
        args: list[Any] = [self.maxlen or 0]
        for event in events:
            args += _fields(event)
        try:
            await self._script(self._client)(keys=[self.stream], args=args)
        except _CONNECTION_ERRORS as exc:
            raise BrokerConnectionError(
                "redis", f"connection lost while publishing: {exc}") from exc
        except redis_errors.ResponseError as exc:
            # The script stops at the first failing XADD (e.g. the key holds another type):
            # report the batch as failed, the relay retries it event by event later.
            return [exc for _ in events]
        return [None for _ in events]

    async def consume(
        self, consumer_name: str, handler: EventHandler, *, stop: Awaitable[None],
        prefetch: int = 100,
    ) -> None:
        client = self._new_client()
        self._consumer_clients.add(client)
        try:
            # One client throughout: redis-py reconnects it on its next command.
            await consume_with_reconnect(
                "redis", consumer_name,
                lambda stopped, backoff: self._consume_loop(
                    client, consumer_name, handler, stopped, prefetch, backoff),
                _CONNECTION_ERRORS, stop=stop, max_delay=self.reconnect_max_delay)
        finally:
            self._consumer_clients.discard(client)
            await client.aclose()

    async def _ensure_group(self, client: aioredis.Redis, group: str) -> None:
        try:
            # "0": a new group starts with what the stream holds, not only what comes next.
            await client.xgroup_create(self.stream, group, id="0", mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _consume_loop(
        self, client: aioredis.Redis, group: str, handler: EventHandler,
        stopped: Any, prefetch: int, backoff: Backoff,
    ) -> None:
        await self._ensure_group(client, group)
        backoff.reset()
        claim_every = max(0.05, min(self.claim_idle / 2, 5.0))
        block_ms = max(1, int(min(self.block, claim_every) * 1000))
        next_claim = 0.0
        while not stopped.done():
            if time.monotonic() >= next_claim:
                await self._claim_and_handle(client, group, handler, prefetch)
                next_claim = time.monotonic() + claim_every
            try:
                got, reply = await first_or_stop(client.xreadgroup(
                    group, self.consumer_id, {self.stream: ">"}, count=prefetch,
                    block=block_ms), stopped)
            except redis_errors.ResponseError as exc:
                if "NOGROUP" in str(exc):  # the stream was deleted (or Redis lost it)
                    await self._ensure_group(client, group)
                    continue
                raise
            if not got:
                return
            # reply: [[stream, [(entry_id, fields), ...]]] (RESP2), or None after BLOCK.
            for stream_reply in reply or []:
                await self._handle_all(client, group, handler, cast(list[Entry], stream_reply[1]))

    async def _claim_and_handle(
        self, client: aioredis.Redis, group: str, handler: EventHandler, prefetch: int
    ) -> None:
        cursor: bytes | str = "0-0"
        while True:
            reply = await client.xautoclaim(
                self.stream, group, self.consumer_id, int(self.claim_idle * 1000),
                start_id=cursor, count=prefetch)
            cursor, entries = reply[0], reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            if deleted:
                logger.error(
                    "%d pending entries of %s were trimmed from stream %s before being handled",
                    len(deleted), group, self.stream,
                    extra={"action": "broker.pending_trimmed", "broker": "redis",
                           "consumer": group, "count": len(deleted)})
            await self._handle_all(client, group, handler, entries)
            if cursor in (b"0-0", "0-0"):
                return

    async def _handle_all(
        self, client: aioredis.Redis, group: str, handler: EventHandler,
        entries: list[Entry],
    ) -> None:
        for entry_id, fields in entries:
            if not fields:  # deleted while pending (older Redis): nothing left to deliver
                await client.xack(self.stream, group, entry_id)
                continue
            try:
                event = _event(fields)
            except (KeyError, ValueError) as exc:
                # It can never be handled: acknowledging it is the only way to stop retrying.
                log_malformed("redis", group, f"drops malformed entry {entry_id.decode()}", exc)
                await client.xack(self.stream, group, entry_id)
                continue
            # A failed entry stays pending until _claim_and_handle takes it back.
            if await run_handler("redis", group, handler, event,
                                 again=f" after {self.claim_idle:g}s"):
                await client.xack(self.stream, group, entry_id)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        for consumer_client in list(self._consumer_clients):
            await consumer_client.aclose()

    async def destroy(self, consumer_names: Sequence[str] = ()) -> None:
        """Admin/teardown operation, not part of the ``Broker`` protocol: deletes the stream,
        so the events it holds and every consumer group on it (``consumer_names`` need not be
        given: the groups go with the stream). Uses a client of its own."""
        client = self._new_client()
        try:
            await client.delete(self.stream)
        finally:
            await client.aclose()


# XADD of every (event_id, headers, body) triple of ARGV after the first, which is MAXLEN
# (0: no trimming). Returns the number of entries added.
_ADD_BATCH = """
local maxlen = tonumber(ARGV[1])
for i = 2, #ARGV, 3 do
  if maxlen > 0 then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*',
               'event_id', ARGV[i], 'headers', ARGV[i + 1], 'body', ARGV[i + 2])
  else
    redis.call('XADD', KEYS[1], '*',
               'event_id', ARGV[i], 'headers', ARGV[i + 1], 'body', ARGV[i + 2])
  end
end
return (#ARGV - 1) / 3
"""


def _fields(event: OutboxEvent) -> list[Any]:
    """event_id (readable with redis-cli), the headers (the whole envelope: identity, type, key,
    saga) and the body."""
    return [event.event_id, json.dumps(event.message_headers(), separators=(",", ":")),
            event.body()]


def _event(fields: dict[bytes, bytes]) -> OutboxEvent:
    # The headers field is the whole envelope (message_headers() carries identity, key and saga);
    # the flat fields are there for people reading the stream with redis-cli.
    headers: dict[str, str] = json.loads(fields[b"headers"])
    headers.setdefault("event_id", fields[b"event_id"].decode())
    return OutboxEvent.from_message(fields[b"body"], headers)
