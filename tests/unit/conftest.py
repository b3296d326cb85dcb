from collections.abc import Iterator

import pytest

import sagaz
from sagaz.storage.memory import InMemorySagaStorage


@pytest.fixture
def storage() -> Iterator[InMemorySagaStorage]:
    """A fresh in-memory storage installed as the global configuration."""
    store = InMemorySagaStorage()
    previous = sagaz.configure(sagaz.SagaConfig(storage=store, lease_seconds=5))
    yield store
    sagaz.configure(previous)
