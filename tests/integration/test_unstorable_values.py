"""Values no storage keeps (a NUL character, a lone surrogate): the same rule on memory, SQLite and
PostgreSQL. A step whose result holds one has failed: its effect is compensated and the recorded
error names the value, instead of a saga left RUNNING until recovery says "executor died"."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sagaz import (
    Saga,
    SagaConfig,
    SagaDefinitionError,
    SagaFailedError,
    SagaStatus,
    StepStatus,
)
from sagaz.storage.base import SagaStorage
from sagaz.storage.memory import InMemorySagaStorage
from sagaz.storage.sqlite import SQLiteSagaStorage

UNSTORABLE = {"nul": "card\x00number", "lone surrogate": "caf\udce9"}


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SagaStorage]:
    store: SagaStorage
    if request.param == "memory":
        store = InMemorySagaStorage()
    elif request.param == "sqlite":
        store = SQLiteSagaStorage(str(tmp_path / "sagas.db"))
    else:
        from sagaz.storage.postgresql import PostgreSQLSagaStorage

        store = PostgreSQLSagaStorage(request.getfixturevalue("pg_dsn"), retry_timeout=5)
    yield store
    await store.close()


def _order_saga(storage: SagaStorage, charge: Any, log: list[str]) -> Saga:
    async def reserve(ctx: Any) -> dict[str, Any]:
        log.append("reserve")
        return {"reserved": True}

    async def release(ctx: Any) -> None:
        log.append("release")

    async def refund(ctx: Any) -> None:
        log.append("refund")

    async def ship(ctx: Any) -> None:
        log.append("ship")

    return (Saga(name="unstorable", config=SagaConfig(storage=storage))
            .add_step("reserve", reserve, release)
            .add_step("charge", charge, refund)
            .add_step("ship", ship))


@pytest.mark.parametrize("value", UNSTORABLE.values(), ids=UNSTORABLE.keys())
async def test_a_result_no_storage_keeps_fails_its_step_and_compensates(
    storage: SagaStorage, value: str
) -> None:
    log: list[str] = []

    async def charge(ctx: Any) -> dict[str, Any]:
        log.append("charge")  # the effect happened
        return {"receipt": {"lines": ["ok", value]}}

    saga = _order_saga(storage, charge, log)
    with pytest.raises(SagaFailedError) as raised:
        await saga.run({"order": "A1"})
    failed = raised.value
    assert failed.status is SagaStatus.COMPENSATED and failed.failed_step == "charge"
    assert log == ["reserve", "charge", "refund", "release"]  # charge's effect is undone too
    stored = await storage.load(failed.saga_id)
    assert stored is not None and stored.status is SagaStatus.COMPENSATED
    assert stored.lease_owner is None
    assert stored.steps["charge"].status is StepStatus.COMPENSATED
    assert stored.failed_step == "charge"
    assert stored.error is not None
    assert "receipt" in stored.error and "['lines'][1]" in stored.error
    assert "NUL" in stored.error or "surrogate" in stored.error
    assert "executor died" not in stored.error
    assert stored.context == {"order": "A1", "reserved": True}  # the refused value is not kept


@pytest.mark.parametrize("value", UNSTORABLE.values(), ids=UNSTORABLE.keys())
async def test_an_event_no_storage_keeps_fails_its_step(storage: SagaStorage, value: str) -> None:
    log: list[str] = []

    async def charge(ctx: Any) -> None:
        log.append("charge")
        ctx.emit("PaymentTaken", {"note": value})

    result = await _order_saga(storage, charge, log).execute({})
    assert result.status is SagaStatus.COMPENSATED and result.failed_step == "charge"
    assert result.error_message is not None and "PaymentTaken" in result.error_message
    assert log == ["reserve", "charge", "release"]  # emit failed: the step failed, no retry


@pytest.mark.parametrize("value", UNSTORABLE.values(), ids=UNSTORABLE.keys())
async def test_an_error_message_no_storage_keeps_is_recorded_escaped(
    storage: SagaStorage, value: str
) -> None:
    async def charge(ctx: Any) -> None:
        raise RuntimeError(f"declined: {value}")

    result = await _order_saga(storage, charge, []).execute({})
    assert result.status is SagaStatus.COMPENSATED
    stored = await storage.load(result.saga_id)
    assert stored is not None and stored.status is SagaStatus.COMPENSATED
    assert stored.error is not None and stored.error.startswith("RuntimeError: declined: ")
    assert "\\x00" in stored.error or "\\udce9" in stored.error


@pytest.mark.parametrize("value", UNSTORABLE.values(), ids=UNSTORABLE.keys())
async def test_a_starting_context_no_storage_keeps_is_refused_before_any_step(
    storage: SagaStorage, value: str
) -> None:
    log: list[str] = []
    saga = _order_saga(storage, lambda ctx: None, log)
    with pytest.raises(SagaDefinitionError, match=r"\['customer'\]"):
        await saga.run({"customer": value})
    with pytest.raises(SagaDefinitionError, match="idempotency_key"):
        await saga.run({}, idempotency_key=value)
    assert log == []
    assert await storage.list_sagas() == []


async def test_a_write_postgresql_refuses_fails_the_step_with_the_real_error(
    pg_dsn: str,
) -> None:
    """Whatever the value rules miss, PostgreSQL may still refuse (here a CHECK constraint):
    the step has failed and is compensated, with PostgreSQL's message recorded."""
    from sagaz.storage.postgresql import PostgreSQLSagaStorage

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE saga_steps ADD CONSTRAINT no_forbidden_results "
                     "CHECK (result IS NULL OR NOT result ? 'forbidden')")
    log: list[str] = []

    async def charge(ctx: Any) -> dict[str, Any]:
        log.append("charge")
        return {"forbidden": 1}

    async with PostgreSQLSagaStorage(pg_dsn, retry_timeout=5) as storage:
        result = await _order_saga(storage, charge, log).execute({})
        assert result.status is SagaStatus.COMPENSATED and result.failed_step == "charge"
        assert log == ["reserve", "charge", "refund", "release"]
        stored = await storage.load(result.saga_id)
    assert stored is not None and stored.status is SagaStatus.COMPENSATED
    assert stored.error is not None
    assert stored.error.startswith("StorageError: PostgreSQL at ")
    assert "no_forbidden_results" in stored.error
