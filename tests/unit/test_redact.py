"""Passwords never reach messages: in the user info or in query parameters."""

import pytest

from sagaz.redact import redact_url


@pytest.mark.parametrize(("url", "shown"), [
    ("amqp://u:s3cret@h:5672/v", "amqp://u:***@h:5672/v"),
    ("postgresql://u@h/db?password=s3cret&sslmode=require",
     "postgresql://u@h/db?password=***&sslmode=require"),
    ("redis://:s3cret@h:6379/0?token=s3cret", "redis://:***@h:6379/0?token=***"),
    ("nats://h:4222", "nats://h:4222"),
    ("redis://u:s3cret@h:port/0", "redis://u:***@h:port/0"),
])
def test_passwords_are_hidden(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "s3cret" not in redact_url(url)


def test_a_url_urllib_cannot_split_is_hidden_past_its_scheme() -> None:
    # An unbalanced "[" makes urlsplit raise: the redaction must not, and must hide the password.
    assert redact_url("postgresql://u:secret@[::1/db") == "postgresql://***"
    assert redact_url("//u:secret@[x/db") == "***"
