"""Starting a saga: its id (given, derived from an idempotency key, or random), the check of its
initial context, the durable creation, and joining a run that already exists."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import TYPE_CHECKING, Any

from sagaz.config import SagaConfig, get_config
from sagaz.engine.executor import SagaExecution
from sagaz.engine.fingerprint import shape_of
from sagaz.engine.lease import process_owner
from sagaz.engine.outcomes import local_runs
from sagaz.engine.types import SagaResult, SagaState, SagaStatus
from sagaz.errors import SagaDefinitionError
from sagaz.storage.control import record_shape
from sagaz.values import UnstorableValueError, check_json, check_text

if TYPE_CHECKING:
    from sagaz.engine.definition import Saga

__all__ = ["IDEMPOTENCY_NAMESPACE", "await_outcome", "check_context", "run_saga", "saga_id_for",
           "start_saga"]

# Namespace for ids derived from idempotency keys: uuid5(namespace, "<saga name>\0<key>").
IDEMPOTENCY_NAMESPACE = uuid.UUID("5a6a2f1e-7c1b-4b8e-9a51-3d1f0c2b9e77")

def saga_id_for(saga_name: str, saga_id: str | None, idempotency_key: str | None) -> str:
    if saga_id is not None and idempotency_key is not None:
        raise SagaDefinitionError("pass saga_id or idempotency_key, not both", saga_name=saga_name)
    if idempotency_key is not None:
        if not isinstance(idempotency_key, str) or not idempotency_key:
            raise SagaDefinitionError("idempotency_key must be a non-empty string",
                                      saga_name=saga_name)
        try:
            check_text(idempotency_key, "the idempotency_key")
        except UnstorableValueError as exc:
            raise SagaDefinitionError(str(exc), saga_name=saga_name) from None
        return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{saga_name}\0{idempotency_key}"))
    if saga_id is None:
        return _random_uuid()
    try:
        return str(uuid.UUID(str(saga_id)))
    except ValueError:
        raise SagaDefinitionError(
            f"saga_id must be a UUID such as {uuid.uuid4()}, got {saga_id!r}; use "
            "idempotency_key=... for arbitrary strings", saga_name=saga_name) from None


def _random_uuid() -> str:
    """A random (version 4) UUID string; the same as ``str(uuid.uuid4())`` at a third of the cost,
    which matters on the hot path of short sagas."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def check_context(saga_name: str, context: Any) -> dict[str, Any]:
    if context is None:
        return {}
    if not isinstance(context, dict):
        raise SagaDefinitionError(
            f"the context must be a dict, got {type(context).__name__}", saga_name=saga_name)
    try:
        if context:
            check_json(context, "the context")
    except UnstorableValueError as exc:
        raise SagaDefinitionError(
            f"the context of saga {saga_name!r} cannot be stored: {exc}", saga_name=saga_name
        ) from exc
    except (TypeError, ValueError) as exc:
        raise SagaDefinitionError(
            f"the context of saga {saga_name!r} is not JSON-serialisable ({exc}); it is "
            "persisted, so use plain JSON values (str, int, float, bool, None, lists, dicts with "
            "str keys)", saga_name=saga_name) from exc
    return dict(context)


async def run_saga(
    saga: Saga,
    context: dict[str, Any] | None,
    *,
    saga_id: str | None = None,
    idempotency_key: str | None = None,
) -> SagaResult:
    """Start (or join) one saga and return its outcome (awaiting through its waits)."""
    started = await start_saga(saga, context, saga_id=saga_id, idempotency_key=idempotency_key)
    if isinstance(started, SagaExecution):
        result = await started.drive()
        if result.status is not SagaStatus.WAITING:
            return result
    config = saga.config or get_config()
    sid = started.state.saga_id if isinstance(started, SagaExecution) else started
    return await await_outcome(saga, config, sid)


async def start_saga(
    saga: Saga,
    context: dict[str, Any] | None,
    *,
    saga_id: str | None = None,
    idempotency_key: str | None = None,
) -> SagaExecution | str:
    """Durably create the saga: the execution to drive it, or the id of the saga that exists
    already under this id (it is run, or was, by someone else)."""
    saga.validate()
    config = saga.config or get_config()
    data = check_context(saga.name, context)
    sid = saga_id_for(saga.name, saga_id, idempotency_key)
    local = local_runs.get(sid)
    if local is not None and local.get_loop() is asyncio.get_running_loop():
        return sid
    owner = process_owner()
    # The saga records the definition it starts with: recovery finishes it with that one.
    shape = shape_of(saga)
    await record_shape(config.write_storage, shape)
    state = SagaState(sid, saga.name, SagaStatus.RUNNING, data, idempotency_key=idempotency_key,
                      lease_owner=owner, definition_fingerprint=shape.fingerprint,
                      definition_version=shape.version)
    stored, created = await config.write_storage.create(state, config.lease_seconds)
    if not created:
        if stored.saga_name != saga.name:
            raise SagaDefinitionError(
                f"saga id {sid} already belongs to saga {stored.saga_name!r}, not {saga.name!r}",
                saga_name=saga.name)
        return sid
    return SagaExecution(saga, config, stored, owner)


async def await_outcome(saga: Saga, config: SagaConfig, saga_id: str) -> SagaResult:
    """Wait for a saga run by someone else (another coroutine, process or recovery) to end,
    resuming it when it parks and becomes due."""
    from sagaz.engine.waits import await_through_waits

    return await await_through_waits(saga, config, saga_id)
