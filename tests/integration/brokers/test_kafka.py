"""The broker contract against Kafka.

No Kafka runs on the development machines, so this module runs only when SAGAZ_TEST_KAFKA names
bootstrap servers (e.g. SAGAZ_TEST_KAFKA=127.0.0.1:9092); otherwise it reports one skip saying so.
This is the one skip the broker tests allow: every other service these tests need must be
reachable (under CI=true they fail when it is not).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

BOOTSTRAP = os.environ.get("SAGAZ_TEST_KAFKA", "")
if not BOOTSTRAP:
    pytest.skip("no Kafka here: set SAGAZ_TEST_KAFKA=host:port to run the Kafka broker tests",
                allow_module_level=True)

from broker_contract import (  # noqa: E402 - only once Kafka is known to be there
    BrokerKit,
    check_connection_loss,
    check_redelivery,
    check_round_trip,
    check_two_consumers,
)

from sagaz.outbox.brokers.kafka import KafkaBroker  # noqa: E402


@pytest.fixture
async def kafka_kit() -> AsyncIterator[BrokerKit]:
    from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

    topic = f"sagaz.test.{uuid.uuid4().hex[:12]}"
    made: list[KafkaBroker] = []

    def make() -> KafkaBroker:
        broker = KafkaBroker(BOOTSTRAP, topic, partitions=3, redelivery_delay=0.2,
                             reconnect_max_delay=0.5)
        made.append(broker)
        return broker

    async def break_connections(broker: Any) -> None:
        if broker._producer is not None:
            await broker._producer.stop()
        for consumer in list(broker._consumers):
            await consumer.stop()

    yield BrokerKit("kafka", make, break_connections)
    for broker in made:
        await broker.close()
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


async def test_round_trip_keeps_the_envelope(kafka_kit: BrokerKit) -> None:
    await check_round_trip(kafka_kit)


async def test_failed_handler_gets_the_event_again(kafka_kit: BrokerKit) -> None:
    await check_redelivery(kafka_kit)


async def test_every_consumer_name_gets_every_event(kafka_kit: BrokerKit) -> None:
    await check_two_consumers(kafka_kit)


async def test_connection_loss_loses_nothing(kafka_kit: BrokerKit) -> None:
    await check_connection_loss(kafka_kit)
