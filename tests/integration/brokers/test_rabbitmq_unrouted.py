"""RabbitMQ keeps an event no consumer queue is bound for: the exchange's alternate exchange routes
it to the durable queue ``<exchange>.unrouted``; destroy() removes that queue with the rest."""

from __future__ import annotations

import aio_pika
import aiormq
import pytest
from conftest import RABBITMQ_URL, require_service

from sagaz.outbox.brokers.rabbitmq import RabbitMQBroker
from sagaz.outbox.event import OutboxEvent


async def test_event_without_consumer_queue_lands_in_unrouted_queue(unique: str) -> None:
    require_service("rabbitmq", RABBITMQ_URL, 5672)
    broker = RabbitMQBroker(RABBITMQ_URL, f"sagaz.test.{unique}")  # no queues= : nothing bound
    event = OutboxEvent("OrderPlaced", {"order_id": "o-1"}, key="o-1")
    try:
        assert await broker.publish_batch([event]) == [None]
        connection = await aio_pika.connect(RABBITMQ_URL)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(broker.unrouted_name, passive=True)
            message = await queue.get(timeout=5, fail=False)
            assert message is not None, "the unroutable event was dropped"
            await message.ack()
            assert message.message_id == event.event_id
            assert message.routing_key == "OrderPlaced"
            assert message.body == event.body()
            assert await queue.get(fail=False) is None
    finally:
        await broker.close()
        await broker.destroy()

    connection = await aio_pika.connect(RABBITMQ_URL)
    async with connection:
        for name in (broker.exchange_name, broker.unrouted_name):
            channel = await connection.channel()
            with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
                await channel.declare_exchange(name, passive=True)
        channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
            await channel.declare_queue(broker.unrouted_name, passive=True)
