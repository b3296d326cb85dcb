"""The outbox relay inside ``sagaz worker``: when a broker is configured (SAGAZ_BROKER_URL) and
the storage is PostgreSQL, the worker also publishes the outbox's events."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sagaz.config import SagaConfig

from .scheduled import postgres_dsn

if TYPE_CHECKING:
    from sagaz.outbox.worker import OutboxWorker

__all__ = ["relay_for"]


def relay_for(config: SagaConfig, listen_dsn: str | None) -> OutboxWorker | None:
    """The relay for ``config``, or None without a broker or a PostgreSQL storage.

    ``listen_dsn`` (SAGAZ_DATABASE_URL: a direct connection, PgBouncer cannot LISTEN) lets the
    relay wake up on NOTIFY; without it, it polls once a second when idle."""
    broker = config.broker
    if broker is None or not hasattr(broker, "publish_batch"):
        return None
    if postgres_dsn(config.write_storage) is None:
        return None
    from sagaz.outbox.worker import OutboxWorker
    from sagaz.storage.postgresql import PostgreSQLSagaStorage
    from sagaz.storage.postgresql.outbox import PostgreSQLOutbox

    storage = config.write_storage
    assert isinstance(storage, PostgreSQLSagaStorage)
    return OutboxWorker(PostgreSQLOutbox(storage, listen_dsn=listen_dsn), broker)
