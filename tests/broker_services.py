"""The brokers the outbox tests publish to are services of this machine (RabbitMQ, Redis and
NATS with JetStream, on loopback): a missing one fails the test, never skips it."""

from __future__ import annotations

import socket

import pytest


def require_broker(kind: str, port: int) -> None:
    """Fail the test, with what to do, unless ``kind`` accepts connections on 127.0.0.1:port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError as exc:
        pytest.fail(f"{kind} is not reachable on 127.0.0.1:{port} ({exc}); start it (it is a "
                    "service of this machine, as RabbitMQ, Redis and NATS with JetStream are)",
                    pytrace=False)
