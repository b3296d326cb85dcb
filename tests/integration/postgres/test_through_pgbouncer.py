"""The PostgreSQL storage through a real PgBouncer 1.18 in transaction mode, in front of the test
server: no prepared statements, no session state, pipelined batches, restarts survived."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sagaz import Saga, SagaConfig, SagaStatus, StorageError
from sagaz.engine.types import SagaState
from sagaz.ha.addresses import kernel_chosen_port
from sagaz.ha.pgbouncer import Backend, PgBouncer, PoolSettings
from sagaz.storage.postgresql import PostgreSQLSagaStorage


@pytest.fixture
def bouncer(pg_dsn: str) -> Iterator[PgBouncer]:
    """PgBouncer (transaction pooling, 2 server connections) in front of the test database."""
    if shutil.which("pgbouncer") is None and not os.path.exists("/usr/sbin/pgbouncer"):
        pytest.fail("pgbouncer is not installed (apt-get install pgbouncer); .ci/run installs it",
                    pytrace=False)
    server = conninfo_to_dict(pg_dsn)
    user = str(server.get("user", "postgres"))
    # Not under pytest's tmp_path: that is private to root, and PgBouncer runs as postgres.
    directory = Path(tempfile.mkdtemp(prefix="sagaz-test-pgbouncer-"))
    bouncer = PgBouncer(
        directory, port=kernel_chosen_port(),
        backends=[Backend(str(server["dbname"]), str(server.get("host", "127.0.0.1")),
                          int(server.get("port", 5432)), str(server["dbname"]))],
        passwords={user: secrets.token_urlsafe(16)}, admin_user=user,
        settings=PoolSettings("transaction", max_client_conn=100, default_pool_size=2,
                              reserve_pool_size=0))
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop(signal.SIGTERM)
        shutil.rmtree(directory, ignore_errors=True)


def pooled_dsn(bouncer: PgBouncer, pg_dsn: str) -> str:
    server = conninfo_to_dict(pg_dsn)
    user = str(server.get("user", "postgres"))
    return make_conninfo(pg_dsn, host="127.0.0.1", port=bouncer.port,
                         password=bouncer.passwords[user])


@pytest.fixture
async def pooled(bouncer: PgBouncer, pg_dsn: str) -> AsyncIterator[PostgreSQLSagaStorage]:
    storage = PostgreSQLSagaStorage(pooled_dsn(bouncer, pg_dsn), auto_migrate=False,
                                    retry_timeout=15)
    yield storage
    await storage.close()


def _saga(storage: PostgreSQLSagaStorage, log: list[str] | None = None) -> Saga:
    async def step(ctx: Any) -> dict[str, Any]:
        if log is not None:
            log.append(ctx.step)
        return {ctx.step: True}

    saga = Saga(name="through-pgbouncer", config=SagaConfig(storage=storage))
    for name in ("reserve", "charge", "ship"):
        saga.add_step(name, step, step)
    return saga


async def test_many_concurrent_sagas_share_two_server_connections(
    pooled: PostgreSQLSagaStorage,
) -> None:
    """More clients than server connections: every batch is a pipelined transaction that
    PgBouncer hands to whichever server connection is free; nothing may depend on the session."""
    saga = _saga(pooled)
    results = await asyncio.gather(*(saga.execute({"i": i}) for i in range(300)))
    assert {r.status for r in results} == {SagaStatus.COMPLETED}
    assert await pooled.count_by_status() == {SagaStatus.COMPLETED: 300}
    stored = await pooled.load(results[0].saga_id)
    assert stored is not None and set(stored.steps) == {"reserve", "charge", "ship"}


async def test_idempotent_starts_serialise_through_transaction_scoped_locks(
    pooled: PostgreSQLSagaStorage,
) -> None:
    log: list[str] = []
    saga = _saga(pooled, log)
    outcomes = await asyncio.gather(*(saga.run({}, idempotency_key="pgb-1") for _ in range(8)))
    assert all(o == outcomes[0] for o in outcomes)
    assert log == ["reserve", "charge", "ship"]


async def test_a_readonly_storage_through_pgbouncer_refuses_writes(
    bouncer: PgBouncer, pg_dsn: str, pooled: PostgreSQLSagaStorage
) -> None:
    await _saga(pooled).execute({})
    reader = PostgreSQLSagaStorage(pooled_dsn(bouncer, pg_dsn), readonly=True)
    try:
        assert len(await reader.list_sagas()) == 1
        state = SagaState("9f1d4b7e-0000-4000-8000-000000000001", "x", SagaStatus.RUNNING, {},
                          lease_owner="me")
        with pytest.raises(StorageError, match="read-only"):
            await reader.create(state, 30)
    finally:
        await reader.close()


async def test_sagas_survive_a_pgbouncer_restart(
    bouncer: PgBouncer, pooled: PostgreSQLSagaStorage
) -> None:
    """PgBouncer killed and restarted while sagas run: their writes are retried, every saga
    completes, none is lost or duplicated."""
    gate = asyncio.Event()

    async def slow(ctx: Any) -> None:
        await gate.wait()

    saga = _saga(pooled)
    saga.add_step("wait", slow)
    runs = [asyncio.create_task(saga.execute({"i": i})) for i in range(50)]
    await asyncio.sleep(0.5)  # all of them are now waiting in the last step
    bouncer.stop(signal.SIGKILL)
    await asyncio.sleep(0.3)
    bouncer.start()
    gate.set()
    results = await asyncio.wait_for(asyncio.gather(*runs), 60)
    assert {r.status for r in results} == {SagaStatus.COMPLETED}
    assert await pooled.count_by_status() == {SagaStatus.COMPLETED: 50}


def test_the_generated_ini_is_what_pgbouncer_runs(bouncer: PgBouncer) -> None:
    text = Path(bouncer.config_path).read_text()
    assert "pool_mode = transaction" in text and "auth_type = scram-sha-256" in text
    assert "server_login_retry = 1" in text
    assert oct(Path(bouncer.directory / "userlist.txt").stat().st_mode & 0o777) == "0o600"
