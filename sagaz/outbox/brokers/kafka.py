"""Kafka through aiokafka: an idempotent producer with acks="all", one topic for all events.

The message key is the event's ``key`` (so events of one aggregate stay in one partition, in
order); headers are ``event.message_headers()`` (UTF-8). A batch is handed to the producer in
full, then all its delivery futures are awaited. Each consumer name is a consumer group with
auto-commit off: offsets are committed after the handler returned. When a handler raises, the
consumer seeks back to that record and delivers it again after ``redelivery_delay`` (the rest of
that partition waits: Kafka has no per-message nack). A new group starts at the earliest offset.

No Kafka runs on the development machines: tests/integration/brokers/test_kafka.py runs against
one only when SAGAZ_TEST_KAFKA names its bootstrap servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    ConsumerStoppedError,
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    ProducerClosed,
    RequestTimedOutError,
    TopicAlreadyExistsError,
)

from sagaz.outbox.brokers import (
    Backoff,
    BrokerConnectionError,
    consume_with_reconnect,
    first_or_stop,
    log_malformed,
    run_handler,
)
from sagaz.outbox.brokers.base import EventHandler
from sagaz.outbox.event import OutboxEvent

__all__ = ["KafkaBroker"]

logger = logging.getLogger(__name__)

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
    ProducerClosed,  # stopped under us: a new producer is started on the next call
    ConsumerStoppedError,
    ConnectionError,
    OSError,
)


class KafkaBroker:
    """Publishes to ``topic`` on the cluster reached through ``bootstrap_servers``."""

    def __init__(
        self,
        bootstrap_servers: str = "127.0.0.1:9092",
        topic: str = "sagaz.events",
        *,
        partitions: int = 6,
        replication_factor: int = 1,
        linger_ms: int = 5,
        redelivery_delay: float = 1.0,
        reconnect_max_delay: float = 5.0,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.linger_ms = linger_ms
        self.redelivery_delay = redelivery_delay
        self.reconnect_max_delay = reconnect_max_delay
        self._producer: Any = None
        self._lock = asyncio.Lock()
        self._consumers: set[Any] = set()

    def __repr__(self) -> str:
        return f"KafkaBroker({self.bootstrap_servers!r}, topic={self.topic!r})"

    async def connect(self) -> None:
        await self._started_producer()

    async def _ensure_topic(self) -> None:
        # Clusters often disable topic auto-creation; creating it here keeps the first publish
        # from failing there.
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(
                self.topic, num_partitions=self.partitions,
                replication_factor=self.replication_factor)])
        except TopicAlreadyExistsError:
            pass
        finally:
            await admin.close()

    async def _started_producer(self) -> Any:
        async with self._lock:
            if self._producer is not None and not self._producer._closed:
                return self._producer
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap_servers, enable_idempotence=True, acks="all",
                linger_ms=self.linger_ms)
            try:
                await self._ensure_topic()
                await producer.start()
            except _CONNECTION_ERRORS as exc:
                await producer.stop()
                raise BrokerConnectionError(
                    "kafka", f"cannot connect to {self.bootstrap_servers}: {exc}") from exc
            self._producer = producer
            logger.info("connected to Kafka %s", self.bootstrap_servers,
                        extra={"action": "broker.connected", "broker": "kafka",
                               "topic": self.topic})
            return producer

    async def _drop_producer(self) -> None:
        async with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            # It is being discarded because it is broken: its errors do not matter.
            with contextlib.suppress(Exception):
                await producer.stop()

    async def publish_batch(self, events: Sequence[OutboxEvent]) -> list[BaseException | None]:
        if not events:
            return []
        producer = await self._started_producer()
        try:
            # send() only queues the record (it waits when the buffer is full); the returned
            # futures resolve once every in-sync replica has it (acks="all").
            futures = [
                await producer.send(
                    self.topic, value=event.body(),
                    key=event.key.encode() if event.key is not None else None,
                    headers=[(k, v.encode()) for k, v in event.message_headers().items()])
                for event in events
            ]
            results = await asyncio.gather(*futures, return_exceptions=True)
        except _CONNECTION_ERRORS as exc:
            await self._drop_producer()
            raise BrokerConnectionError(
                "kafka", f"connection lost while publishing: {exc!r}") from exc
        outcomes: list[BaseException | None] = []
        for result in results:
            if isinstance(result, _CONNECTION_ERRORS):
                await self._drop_producer()
                raise BrokerConnectionError(
                    "kafka", f"connection lost while publishing: {result!r}") from result
            outcomes.append(result if isinstance(result, BaseException) else None)
        return outcomes

    async def consume(
        self, consumer_name: str, handler: EventHandler, *, stop: Awaitable[None],
        prefetch: int = 100,
    ) -> None:
        await consume_with_reconnect(
            "kafka", consumer_name,
            lambda stopped, backoff: self._consume_once(
                consumer_name, handler, stopped, prefetch, backoff),
            _CONNECTION_ERRORS, stop=stop, max_delay=self.reconnect_max_delay)

    async def _consume_once(
        self, consumer_name: str, handler: EventHandler, stopped: asyncio.Future[None],
        prefetch: int, backoff: Backoff,
    ) -> None:
        consumer = AIOKafkaConsumer(
            self.topic, bootstrap_servers=self.bootstrap_servers, group_id=consumer_name,
            enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=prefetch)
        await consumer.start()
        self._consumers.add(consumer)
        try:
            backoff.reset()
            logger.info("Kafka consumer %s started on %s", consumer_name, self.topic,
                        extra={"action": "broker.consumer_started", "broker": "kafka",
                               "consumer": consumer_name})
            while not stopped.done():
                got, batches = await first_or_stop(
                    consumer.getmany(timeout_ms=1000, max_records=prefetch), stopped)
                if not got:
                    return
                done: dict[Any, int] = {}
                for partition, records in (batches or {}).items():
                    for record in records:
                        if not await self._handle(consumer_name, handler, record):
                            # Deliver it (and what follows in its partition) again.
                            consumer.seek(partition, record.offset)
                            await asyncio.sleep(self.redelivery_delay)
                            break
                        done[partition] = record.offset + 1
                if done:
                    # One commit per poll: a crash before it redelivers the poll's handled
                    # records, which consumers deduplicate on event_id.
                    await consumer.commit(done)
        finally:
            self._consumers.discard(consumer)
            await consumer.stop()

    async def _handle(self, consumer_name: str, handler: EventHandler, record: Any) -> bool:
        headers = {k: bytes(v).decode() for k, v in (record.headers or ())}
        try:
            event = OutboxEvent.from_message(record.value, headers)
        except (KeyError, ValueError) as exc:
            log_malformed("kafka", consumer_name,
                          f"skips a malformed record at offset {record.offset}", exc)
            return True  # it can never be handled: committing past it is the only way on
        return await run_handler("kafka", consumer_name, handler, event)

    async def close(self) -> None:
        await self._drop_producer()
        for consumer in list(self._consumers):
            await consumer.stop()

    async def destroy(self, consumer_names: Sequence[str] = ()) -> None:
        """Admin/teardown operation, not part of the ``Broker`` protocol: deletes the topic
        through aiokafka's admin client, so the events it holds (the cluster must allow it:
        ``delete.topic.enable``, true by default; a missing topic is no error). The consumer
        groups ``consumer_names`` are not deleted: aiokafka's admin client cannot delete groups,
        and their committed offsets expire by themselves (``offsets.retention.minutes``)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
        await admin.start()
        try:
            await admin.delete_topics([self.topic])
        finally:
            await admin.close()
