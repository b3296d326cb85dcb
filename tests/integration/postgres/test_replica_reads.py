"""Reads from a real streaming replica (the local cluster: primary, one replica, pgbouncer-rw and
pgbouncer-ro): the read-only storage, and read-your-writes when the replica lags."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from sagaz import Saga, SagaConfig, SagaStatus, StorageError
from sagaz.ha.local import SUPERUSER, LocalCluster
from sagaz.storage.postgresql import PostgreSQLSagaStorage


@pytest.fixture
def cluster(local_cluster: LocalCluster) -> LocalCluster:
    return local_cluster


@pytest.fixture
async def storages(
    cluster: LocalCluster,
) -> AsyncIterator[tuple[PostgreSQLSagaStorage, PostgreSQLSagaStorage]]:
    env = cluster.env()
    write = PostgreSQLSagaStorage(env["SAGAZ_STORAGE_URL"], auto_migrate=False)
    read = PostgreSQLSagaStorage(env["SAGAZ_ANALYTICS_URL"], readonly=True, primary=write,
                                 replica_wait=0.3)
    yield write, read
    await read.close()
    await write.close()


def _replica_admin(cluster: LocalCluster) -> psycopg.Connection[Any]:
    replica = cluster.replicas[0]
    return psycopg.connect(cluster.dsn(user=SUPERUSER, port=replica.port, dbname="postgres")
                           .replace("host=127.0.0.1", f"host={replica.host}"), autocommit=True)


def _saga(storage: PostgreSQLSagaStorage) -> Saga:
    async def step(ctx: Any) -> dict[str, Any]:
        return {ctx.step: "done"}

    saga = Saga(name="replica-reads", config=SagaConfig(storage=storage))
    saga.add_step("only", step)
    return saga


async def test_the_read_pool_serves_from_the_replica_and_refuses_writes(
    storages: tuple[PostgreSQLSagaStorage, PostgreSQLSagaStorage],
) -> None:
    write, read = storages
    result = await _saga(write).execute({})
    lsn = await write.write_lsn()
    state = await read.get_saga(result.saga_id, min_lsn=lsn)
    assert state is not None and state.status is SagaStatus.COMPLETED
    async with await psycopg.AsyncConnection.connect(read.dsn) as conn:
        cur = await conn.execute("SELECT pg_is_in_recovery()")
        assert await cur.fetchone() == (True,)
    with pytest.raises(StorageError, match="read-only"):
        await read.claim_expired("me", 30, 1)


async def test_a_lagging_replica_never_returns_a_state_older_than_our_write(
    cluster: LocalCluster, storages: tuple[PostgreSQLSagaStorage, PostgreSQLSagaStorage],
) -> None:
    write, read = storages
    saga = _saga(write)
    with _replica_admin(cluster) as admin:
        admin.execute("SELECT pg_wal_replay_pause()")
        try:
            result = await saga.execute({"n": 1})
            lsn = await write.write_lsn()
            # Paused replay: the replica has not seen the saga; the read falls back to the primary.
            assert await read.load(result.saga_id) is None
            state = await read.get_saga(result.saga_id, min_lsn=lsn)
            assert state is not None and state.status is SagaStatus.COMPLETED
            # Without a primary to fall back to, the read fails rather than answer stale data.
            lone = PostgreSQLSagaStorage(read.dsn, readonly=True, replica_wait=0.2)
            try:
                with pytest.raises(StorageError, match="has not replayed"):
                    await lone.get_saga(result.saga_id, min_lsn=lsn)
            finally:
                await lone.close()
        finally:
            admin.execute("SELECT pg_wal_replay_resume()")
    # Once replay resumes, the replica itself answers within the wait.
    state = await read.get_saga(result.saga_id, min_lsn=lsn, wait=10)
    assert state is not None and state.status is SagaStatus.COMPLETED


async def test_read_your_writes_as_a_session_option(
    storages: tuple[PostgreSQLSagaStorage, PostgreSQLSagaStorage],
) -> None:
    write, read = storages
    session = PostgreSQLSagaStorage(read.dsn, readonly=True, primary=write,
                                    read_your_writes=True)
    try:
        for i in range(20):
            result = await _saga(write).execute({"i": i})
            state = await session.get_saga(result.saga_id)
            assert state is not None and state.context["i"] == i
    finally:
        await session.close()


def test_read_your_writes_needs_a_primary() -> None:
    with pytest.raises(StorageError, match="needs primary"):
        PostgreSQLSagaStorage("postgresql://x@127.0.0.1/db", readonly=True, read_your_writes=True)
