"""The storage contract fixture: one test body, run against every storage.

``storage_backend`` (a plugin of tests/conftest.py, usable by any test) is parametrised over the
in-memory, SQLite and PostgreSQL storages. A test that takes it gets:

* ``backend.storage``: the storage of this test (a fresh SQLite file or PostgreSQL database);
* ``backend.config(**kwargs)``: a :class:`SagaConfig` on it, installed as the global one;
* ``backend.url``: a ``SAGAZ_STORAGE_URL`` for child processes (None for memory, which lives in
  this process only: ``backend.in_process`` tells the test to run its "other process" here).

The contract suite itself lives in tests/integration/storage_contract/. The PostgreSQL variant
fails (never skips) when the server is missing, like every PostgreSQL test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pg_fixtures import as_url

import sagaz
from sagaz import SagaConfig
from sagaz.storage.base import SagaStorage
from sagaz.storage.memory import InMemorySagaStorage
from sagaz.storage.postgresql import PostgreSQLSagaStorage
from sagaz.storage.sqlite import SQLiteSagaStorage

KINDS = ("memory", "sqlite", "postgresql")


@dataclass
class Backend:
    kind: str
    storage: SagaStorage
    url: str | None
    _configs: list[SagaConfig] = field(default_factory=list)

    @property
    def in_process(self) -> bool:
        """True for memory: a child process cannot see its data."""
        return self.url is None

    def config(self, **kwargs: Any) -> SagaConfig:
        config = SagaConfig(storage=self.storage, **kwargs)
        sagaz.configure(config)
        self._configs.append(config)
        return config


@pytest.fixture(params=KINDS)
async def storage_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    storage: SagaStorage
    url: str | None
    if request.param == "memory":
        storage, url = InMemorySagaStorage(), None
    elif request.param == "sqlite":
        path = tmp_path / "sagas.db"
        storage, url = SQLiteSagaStorage(path), f"sqlite:///{path}"
    else:
        dsn = request.getfixturevalue("pg_dsn")
        storage, url = PostgreSQLSagaStorage(dsn), as_url(dsn)
    found = Backend(request.param, storage, url)
    try:
        yield found
    finally:
        sagaz.configure(None)
        await storage.close()
