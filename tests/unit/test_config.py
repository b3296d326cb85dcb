"""Configuration from code and from SAGAZ_* variables; malformed values name what to fix."""

from pathlib import Path

import pytest

from sagaz import ConfigurationError, SagaConfig
from sagaz.config import get_config
from sagaz.outbox.brokers.memory import InMemoryBroker
from sagaz.storage.memory import InMemorySagaStorage
from sagaz.storage.sqlite import SQLiteSagaStorage


def test_embedded_default_is_sqlite_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = SagaConfig.from_env({})
    assert isinstance(config.storage, SQLiteSagaStorage)
    assert config.storage.path == tmp_path / "sagaz.db"
    assert config.read_storage is config.storage
    assert config.lease_seconds == 30


def test_urls_select_storages_and_broker(tmp_path: Path) -> None:
    config = SagaConfig.from_env({
        "SAGAZ_STORAGE_URL": f"sqlite:///{tmp_path}/w.db",
        "SAGAZ_ANALYTICS_URL": "memory://",
        "SAGAZ_BROKER_URL": "memory://",
        "SAGAZ_LEASE_SECONDS": "2.5",
    })
    assert isinstance(config.storage, SQLiteSagaStorage)
    assert config.storage.path == tmp_path / "w.db"
    assert isinstance(config.analytics_storage, InMemorySagaStorage)
    assert config.read_storage is config.analytics_storage
    assert config.analytics_storage.readonly
    assert isinstance(config.broker, InMemoryBroker)
    assert config.lease_seconds == 2.5


def test_relative_sqlite_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = SagaConfig.from_env({"SAGAZ_STORAGE_URL": "sqlite:///data/s.db"})
    assert isinstance(config.storage, SQLiteSagaStorage)
    assert config.storage.path == tmp_path / "data" / "s.db"


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"SAGAZ_STORAGE_URL": "mysql://x"}, "SAGAZ_STORAGE_URL"),
        ({"SAGAZ_STORAGE_URL": "just-a-path.db"}, "sqlite:///relative/path.db"),
        ({"SAGAZ_STORAGE_URL": "sqlite://host/x.db"}, "not a SQLite URL"),
        ({"SAGAZ_ANALYTICS_URL": "ftp://x"}, "SAGAZ_ANALYTICS_URL"),
        ({"SAGAZ_BROKER_URL": "carrier-pigeon://coop"}, "SAGAZ_BROKER_URL"),
        ({"SAGAZ_LEASE_SECONDS": "soon"}, "SAGAZ_LEASE_SECONDS"),
        ({"SAGAZ_LEASE_SECONDS": "-1"}, "lease_seconds"),
    ],
)
def test_malformed_values_name_the_variable_and_the_expected_form(
    env: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        SagaConfig.from_env({"SAGAZ_STORAGE_URL": "memory://", **env})


def test_passwords_are_not_echoed_in_errors() -> None:
    with pytest.raises(ConfigurationError) as info:
        SagaConfig.from_env({"SAGAZ_STORAGE_URL": "mysql://app:hunter2@db/x"})
    assert "hunter2" not in str(info.value)


def test_get_config_builds_from_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import sagaz

    previous = sagaz.configure(None)
    try:
        monkeypatch.setenv("SAGAZ_STORAGE_URL", "memory://")
        config = get_config()
        assert isinstance(config.storage, InMemorySagaStorage)
        assert get_config() is config
    finally:
        sagaz.configure(previous)
