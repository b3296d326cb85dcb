"""Global configuration: which storage, analytics storage and broker sagas use.

``configure(SagaConfig(...))`` sets it explicitly; otherwise the first saga that runs builds it
from the environment with :meth:`SagaConfig.from_env` (``SAGAZ_*`` variables), and with no variables
at all that is the embedded default: SQLite in ``./sagaz.db`` and the in-process broker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sagaz.engine.clock import Clock, SystemClock
from sagaz.engine.listeners import SagaListener
from sagaz.errors import ConfigurationError
from sagaz.redact import redact_url
from sagaz.storage.base import SagaStorage

__all__ = ["SagaConfig", "configure", "get_config", "shutdown", "storage_from_url"]

logger = logging.getLogger(__name__)

DEFAULT_STORAGE_URL = "sqlite:///sagaz.db"
DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_RETRY_TIMEOUT = 30.0

_STORAGE_FORMS = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db, memory://, "
    "or postgresql://user@host:port/dbname"
)


@dataclass
class SagaConfig:
    """Where sagas keep their state and publish their events."""

    storage: SagaStorage | None = None
    analytics_storage: SagaStorage | None = None
    """Read side (replicas) for listings and statistics; defaults to ``storage``."""
    broker: Any = None
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    """How long an executor's claim on a running saga lasts without a heartbeat."""
    listeners: list[SagaListener] = field(default_factory=list)
    lifecycle_events: bool = True
    """Write SagaCompleted / SagaCompensated / SagaFailed to the outbox with the final status."""
    clock: Clock = field(default_factory=SystemClock)
    """The time of durable waits and timers (``sagaz.testing.ManualClock`` in tests)."""

    def __post_init__(self) -> None:
        if self.storage is None:
            self.storage = storage_from_url(DEFAULT_STORAGE_URL, "default storage")
        if not isinstance(self.lease_seconds, int | float) or self.lease_seconds <= 0:
            raise ConfigurationError(
                f"lease_seconds must be a number > 0, got {self.lease_seconds!r}")

    @property
    def write_storage(self) -> SagaStorage:
        assert self.storage is not None
        return self.storage

    @property
    def read_storage(self) -> SagaStorage:
        return self.analytics_storage or self.write_storage

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> SagaConfig:
        """Build a config from ``SAGAZ_STORAGE_URL``, ``SAGAZ_ANALYTICS_URL``,
        ``SAGAZ_BROKER_URL``, ``SAGAZ_LEASE_SECONDS`` and ``SAGAZ_RETRY_TIMEOUT``; keyword
        arguments win over them."""
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {}
        retry = _seconds(env, "SAGAZ_RETRY_TIMEOUT", "30")
        url = env.get("SAGAZ_STORAGE_URL") or DEFAULT_STORAGE_URL
        kwargs["storage"] = storage_from_url(url, "SAGAZ_STORAGE_URL", retry_timeout=retry)
        analytics = env.get("SAGAZ_ANALYTICS_URL")
        if analytics:
            kwargs["analytics_storage"] = storage_from_url(
                analytics, "SAGAZ_ANALYTICS_URL", readonly=True, retry_timeout=retry)
        broker = env.get("SAGAZ_BROKER_URL")
        if broker:
            kwargs["broker"] = broker_from_url(broker, "SAGAZ_BROKER_URL")
        lease = env.get("SAGAZ_LEASE_SECONDS")
        if lease:
            try:
                kwargs["lease_seconds"] = float(lease)
            except ValueError:
                raise ConfigurationError(
                    f"SAGAZ_LEASE_SECONDS must be a number of seconds such as 30, got {lease!r}"
                ) from None
        kwargs.update(overrides)
        return cls(**kwargs)


def _seconds(env: Mapping[str, str], variable: str, example: str) -> float | None:
    value = env.get(variable)
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also refuses nan
        raise ConfigurationError(
            f"{variable} must be a number of seconds >= 0 such as {example}, got {value!r}")
    return seconds


def storage_from_url(
    url: str, variable: str, *, readonly: bool = False, retry_timeout: float | None = None
) -> SagaStorage:
    """The storage a URL names. ``variable`` is named in errors so users know what to fix.
    ``retry_timeout``: seconds a database storage retries connection errors (its default when
    None)."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unbalanced "[" or "]" (IPv6 literal) in the host
        raise ConfigurationError(
            f"{variable}={redact_url(url)!r} is malformed ({exc}); expected one of: "
            f"{_STORAGE_FORMS} (an IPv6 host goes in brackets: [::1]:5432)") from None
    scheme = parts.scheme.lower()
    if scheme == "memory":
        from sagaz.storage.memory import InMemorySagaStorage

        return InMemorySagaStorage(readonly=readonly)
    if scheme == "sqlite":
        # sqlite:///rel.db -> "rel.db"; sqlite:////abs.db -> "/abs.db"
        if parts.netloc or not parts.path.startswith("/") or len(parts.path) < 2:
            raise ConfigurationError(
                f"{variable}={url!r} is not a SQLite URL; expected sqlite:///relative/path.db "
                "or sqlite:////absolute/path.db")
        from sagaz.storage.sqlite import SQLiteSagaStorage

        return SQLiteSagaStorage(parts.path[1:], readonly=readonly)
    if scheme in ("postgresql", "postgres"):
        try:
            from sagaz.storage.postgresql import PostgreSQLSagaStorage
        except ImportError as exc:
            raise ConfigurationError(
                f"{variable} names PostgreSQL, but PostgreSQL storage is not available in this "
                f"installation ({exc}); install it with: pip install 'sagaz[postgres]'") from exc
        storage: SagaStorage = PostgreSQLSagaStorage(
            dsn=url, readonly=readonly,
            retry_timeout=DEFAULT_RETRY_TIMEOUT if retry_timeout is None else retry_timeout)
        return storage
    raise ConfigurationError(
        f"{variable}={redact_url(url)!r} has an unsupported or missing scheme; expected one of: "
        f"{_STORAGE_FORMS}")


def broker_from_url(url: str, variable: str) -> Any:
    """The broker a URL names (see :func:`sagaz.outbox.brokers.broker_from_url`). ``variable`` is
    named in errors so users know what to fix."""
    from sagaz.outbox.brokers import broker_from_url as _broker_from_url

    try:
        return _broker_from_url(url)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{variable}: {exc}") from exc


_config: SagaConfig | None = None


def configure(config: SagaConfig | None) -> SagaConfig | None:
    """Install ``config`` as the global configuration (None: rebuild from the environment on next
    use). Returns the previous one."""
    global _config
    previous, _config = _config, config
    return previous


def get_config() -> SagaConfig:
    """The global configuration, built from the environment on first use."""
    global _config
    if _config is None:
        _config = SagaConfig.from_env()
    return _config


async def shutdown() -> None:
    """Close what the global configuration holds open (the storages' connection pools and
    threads, the broker's connection) and forget it; the next saga builds it again. Await it
    once before the program's event loop ends, after the last saga::

        sagaz.configure(SagaConfig(storage=PostgreSQLSagaStorage(DSN)))
        try:
            await serve()
        finally:
            await sagaz.shutdown()
    """
    global _config
    config, _config = _config, None
    if config is None:
        return
    from sagaz.outbox.brokers.base import Broker

    storages = [config.write_storage]
    if config.read_storage is not config.write_storage:
        storages.append(config.read_storage)
    for storage in storages:
        await storage.close()
    if isinstance(config.broker, Broker):
        await config.broker.close()
