"""broker_from_url: every scheme, clear errors for bad URLs, and never a password in a message."""

from __future__ import annotations

import logging
import sys

import pytest
from conftest import RABBITMQ_URL, REDIS_URL, require_service

from sagaz.config import SagaConfig
from sagaz.errors import ConfigurationError, SagazError
from sagaz.outbox.brokers import BrokerConnectionError, broker_from_url, redact_url
from sagaz.outbox.brokers.base import Broker
from sagaz.outbox.brokers.kafka import KafkaBroker
from sagaz.outbox.brokers.memory import InMemoryBroker
from sagaz.outbox.brokers.nats import NATSBroker
from sagaz.outbox.brokers.rabbitmq import RabbitMQBroker
from sagaz.outbox.brokers.redis import RedisStreamsBroker

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("memory://", InMemoryBroker),
        ("amqp://guest:guest@127.0.0.1:5672/", RabbitMQBroker),
        ("amqps://u:p@mq.example.com:5671/vhost", RabbitMQBroker),
        ("redis://127.0.0.1:6379/0", RedisStreamsBroker),
        ("rediss://:pw@cache.example.com:6380/1", RedisStreamsBroker),
        ("nats://127.0.0.1:4222", NATSBroker),
        ("kafka://127.0.0.1:9092", KafkaBroker),
        ("KAFKA://k1:9092,k2:9093", KafkaBroker),
    ],
)
def test_each_scheme_selects_its_broker(url: str, kind: type) -> None:
    broker = broker_from_url(url)
    assert isinstance(broker, kind)
    assert isinstance(broker, Broker)  # the protocol, structurally


def test_options_reach_the_broker_and_kafka_takes_a_host_list() -> None:
    rabbit = broker_from_url("amqp://guest:guest@127.0.0.1:5672/", exchange="orders")
    assert isinstance(rabbit, RabbitMQBroker)
    assert rabbit.exchange_name == "orders"
    kafka = broker_from_url("kafka://k1:9092, k2:9093")
    assert isinstance(kafka, KafkaBroker)
    assert kafka.bootstrap_servers == "k1:9092,k2:9093"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("carrier-pigeon://coop", "amqp://"),
        ("no-scheme-at-all", "redis://host:6379/0"),
        (f"mqtt://admin:{SECRET}@broker:1883", "nats://host:4222"),
        ("kafka://k1", "host:port"),
        (f"kafka://user:{SECRET}@k1:9092,k2", "host:port"),
    ],
)
def test_bad_urls_say_what_is_expected_and_hide_passwords(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        broker_from_url(url)
    assert fragment in str(caught.value)
    assert SECRET not in str(caught.value)


def test_config_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="SAGAZ_BROKER_URL") as caught:
        SagaConfig.from_env({"SAGAZ_STORAGE_URL": "memory://",
                             "SAGAZ_BROKER_URL": f"zmq://me:{SECRET}@host"})
    assert SECRET not in str(caught.value)
    config = SagaConfig.from_env({"SAGAZ_STORAGE_URL": "memory://",
                                  "SAGAZ_BROKER_URL": "redis://127.0.0.1:6379/0"})
    assert isinstance(config.broker, RedisStreamsBroker)


@pytest.mark.parametrize(
    ("url", "driver", "module", "extra"),
    [
        ("amqp://127.0.0.1/", "aio_pika", "rabbitmq", "rabbitmq"),
        ("redis://127.0.0.1/", "redis", "redis", "redis"),
        ("nats://127.0.0.1:4222", "nats", "nats", "nats"),
        ("kafka://127.0.0.1:9092", "aiokafka", "kafka", "kafka"),
    ],
)
def test_a_missing_driver_names_the_extra(
    url: str, driver: str, module: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, driver, None)  # makes `import <driver>` fail
    monkeypatch.delitem(sys.modules, f"sagaz.outbox.brokers.{module}")
    with pytest.raises(ConfigurationError, match=rf"pip install 'sagaz\[{extra}\]'"):
        broker_from_url(url)


def test_redact_url() -> None:
    assert redact_url(f"amqp://guest:{SECRET}@h:5672/v") == "amqp://guest:***@h:5672/v"
    assert redact_url(f"redis://:{SECRET}@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("nats://h:4222") == "nats://h:4222"
    assert SECRET not in redact_url(f"amqp://u:{SECRET}@h:notaport/")
    assert SECRET not in repr(RabbitMQBroker(f"amqp://u:{SECRET}@h/"))
    assert SECRET not in repr(RedisStreamsBroker(f"redis://:{SECRET}@h/0"))


async def test_failed_logins_keep_the_password_out_of_errors_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    require_service("rabbitmq", RABBITMQ_URL, 5672)
    require_service("redis", REDIS_URL, 6379)
    caplog.set_level(logging.DEBUG)
    for broker in (RabbitMQBroker(f"amqp://guest:{SECRET}@127.0.0.1:5672/"),
                   RedisStreamsBroker(f"redis://nosuchuser:{SECRET}@127.0.0.1:6379/0")):
        with pytest.raises(SagazError) as caught:
            await broker.connect()
        assert isinstance(caught.value, BrokerConnectionError | ConfigurationError)
        assert SECRET not in str(caught.value)
        await broker.close()
    assert SECRET not in caplog.text
