"""Fixtures shared by every test directory. Keep this file small and generic."""

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import sagaz
from sagaz import SagaConfig

# The PostgreSQL fixtures (pg_dsn, pg_empty_dsn, ...), the local cluster (local_cluster) and the
# storage contract (storage_backend: one test body on memory, SQLite and PostgreSQL):
# plugins rather than this file, which stays small and generic.
pytest_plugins = ["pg_fixtures", "cluster_fixtures", "storage_contract"]


@pytest.fixture
async def use_config() -> AsyncIterator[Callable[..., SagaConfig]]:
    """Install ``SagaConfig(**kwargs)`` as the global configuration for one test.

    Call it as ``use_config(storage=..., lease_seconds=...)``; it returns the config. Afterwards the
    global configuration is reset (``sagaz.configure(None)``) and the storages it named are closed.
    """
    installed: list[SagaConfig] = []

    def install(**kwargs: Any) -> SagaConfig:
        config = SagaConfig(**kwargs)
        sagaz.configure(config)
        installed.append(config)
        return config

    yield install
    sagaz.configure(None)
    for config in installed:
        for storage in {id(s): s for s in (config.storage, config.analytics_storage) if s}.values():
            await storage.close()
