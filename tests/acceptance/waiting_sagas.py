"""A saga that waits for a signal, for the CLI acceptance tests (imported by `sagaz worker`)."""

from __future__ import annotations

from typing import Any

from sagaz import Saga, SagaContext, register


async def reserve(ctx: SagaContext) -> dict[str, Any]:
    return {"reserved": True}


async def release(ctx: SagaContext) -> None:
    return None


async def ship(ctx: SagaContext) -> dict[str, Any]:
    return {"shipped_to": ctx["address"]}


approval = (Saga(name="cli-approval")
            .add_step("reserve", reserve, release)
            .add_wait("approval", signal="OrderApproved", timeout=86400)
            .add_step("ship", ship))
register(approval)  # workers that import this module can resume it
