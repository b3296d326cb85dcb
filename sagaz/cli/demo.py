"""``sagaz demo``: an order saga run twice, once through and once failing on purpose, with each
step and compensation printed live.

The saga is an importable, registered definition, so an interrupted demo run is recovered by
``sagaz worker --import sagaz.cli.demo`` like any user saga.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from enum import StrEnum
from functools import partial
from typing import Annotated, Any

import typer

from sagaz.engine.context import SagaContext
from sagaz.engine.definition import Saga, action, compensate
from sagaz.engine.types import SagaResult, SagaStatus

from .common import ExitCode, Storages, execute, run_async
from .output import LiveListener, escape, out

__all__ = ["DemoFailure", "DemoStep", "OrderSaga", "demo"]


class DemoStep(StrEnum):
    RESERVE = "reserve"
    CHARGE = "charge"
    SHIP = "ship"


class DemoFailure(RuntimeError):
    """The failure the demo forces with ``fail_at`` in the context."""


async def _work(ctx: SagaContext) -> None:
    # "pace" only makes the live output readable; "fail_at" forces the failure being demonstrated.
    await asyncio.sleep(float(ctx.get("pace", 0)))
    if ctx.get("fail_at") == ctx.step:
        raise DemoFailure(f"{ctx.step} refused order {ctx.get('order_id')} "
                          f"(forced by fail_at={ctx.step!r})")


class OrderSaga(Saga):
    """Reserve inventory, charge the payment, ship; each undone by its compensation.

    Compensations are idempotent (recovery may run them more than once, or for a step whose
    action never got to act): they only record that the undo happened.
    """

    saga_name = "sagaz-demo-order"

    @action(DemoStep.RESERVE.value)
    async def reserve(self, ctx: SagaContext) -> dict[str, Any]:
        await _work(ctx)
        return {"reservation_id": f"res-{ctx['order_id']}"}

    @compensate(DemoStep.RESERVE.value)
    async def release(self, ctx: SagaContext) -> dict[str, Any]:
        await asyncio.sleep(float(ctx.get("pace", 0)))
        return {"reservation_released": True}

    @action(DemoStep.CHARGE.value)
    async def charge(self, ctx: SagaContext) -> dict[str, Any]:
        await _work(ctx)
        return {"payment_id": f"pay-{ctx['order_id']}"}

    @compensate(DemoStep.CHARGE.value)
    async def refund(self, ctx: SagaContext) -> dict[str, Any]:
        await asyncio.sleep(float(ctx.get("pace", 0)))
        return {"payment_refunded": True}

    @action(DemoStep.SHIP.value)
    async def ship(self, ctx: SagaContext) -> dict[str, Any]:
        await _work(ctx)
        return {"tracking_number": f"trk-{ctx['order_id']}"}

    @compensate(DemoStep.SHIP.value)
    async def recall(self, ctx: SagaContext) -> dict[str, Any]:
        await asyncio.sleep(float(ctx.get("pace", 0)))
        return {"shipment_recalled": True}


def demo(
    fail_at: Annotated[DemoStep, typer.Option(
        "--fail-at", envvar="SAGAZ_DEMO_FAIL_AT", case_sensitive=False,
        help="Step at which the second run fails on purpose.")] = DemoStep.CHARGE,
    pace: Annotated[float, typer.Option(
        "--pace", min=0, envvar="SAGAZ_DEMO_PACE",
        help="Seconds each step takes, so the progress can be followed.")] = 0.3,
) -> None:
    """Run an order saga twice on the configured storage: once through, once failing on purpose
    (at --fail-at) so you can watch the completed steps being compensated."""
    execute(lambda: run_async(partial(_demo, fail_at, pace)))


async def _demo(fail_at: DemoStep, pace: float, storages: Storages) -> int:
    config = storages.config()
    saga = OrderSaga()
    listener = LiveListener()
    config.listeners.append(listener)
    try:
        out.print(f"State is kept in {escape(repr(config.write_storage))}\n")
        out.rule("Run 1: an order that goes through")
        ok = await saga.execute(_order(pace))
        _summary(ok)
        out.rule(f"Run 2: the {fail_at.value} step fails on purpose")
        failed = await saga.execute({**_order(pace), "fail_at": fail_at.value})
        _summary(failed)
    finally:
        config.listeners.remove(listener)
    out.print(
        f"\nThe second run failed at [bold]{fail_at.value}[/] as intended. sagaz then ran the "
        "compensations of the steps that had completed, newest first, so the order left no "
        "trace: that is a saga. Every change was committed before the next step, so a crash at "
        "any point is finished by [bold]sagaz worker[/].\n"
        f"Look at both runs with [bold]sagaz sagas list[/] and "
        f"[bold]sagaz sagas show {failed.saga_id}[/]."
    )
    expected = ok.status is SagaStatus.COMPLETED and failed.status is SagaStatus.COMPENSATED
    return ExitCode.OK if expected else ExitCode.FAILED


def _order(pace: float) -> dict[str, Any]:
    return {"order_id": uuid.uuid4().hex[:8], "amount": 42.5, "pace": pace}


def _summary(result: SagaResult) -> None:
    if result.succeeded:
        out.print(f"  final context: {escape(json.dumps(result.context))}\n", soft_wrap=True)
    else:
        out.print(f"  failed step: {result.failed_step}; error: "
                  f"{escape(result.error_message or '-')}\n", soft_wrap=True)
