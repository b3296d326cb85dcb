"""``sagaz sagas signal``: send a signal to a saga (a wait for it resumes the saga)."""

from __future__ import annotations

import json
from functools import partial
from typing import Annotated, Any

import typer

from sagaz.engine.waits import signal
from sagaz.errors import SagaNotFoundError, SignalRefusedError

from .common import ExitCode, Storages, execute, fail, run_async
from .output import escape, out

__all__ = ["signal_saga"]


def signal_saga(
    saga_id: Annotated[str, typer.Argument(metavar="ID", help="The saga id (a UUID).")],
    name: Annotated[str, typer.Argument(
        metavar="NAME", help="The signal name its wait expects, e.g. OrderApproved.")],
    payload: Annotated[str, typer.Option(
        "--payload", envvar="SAGAZ_SIGNAL_PAYLOAD", metavar="JSON",
        help='A JSON object merged into the saga\'s context, e.g. \'{"approved": true}\'.')] = "{}",
    signal_id: Annotated[str | None, typer.Option(
        "--signal-id", envvar="SAGAZ_SIGNAL_ID", metavar="ID", show_default=False,
        help="Makes the signal idempotent: sending the same id again changes nothing (a "
             "webhook retried by its sender).")] = None,
) -> None:
    """Send signal NAME to saga ID: a wait for it resumes the saga (any `sagaz worker`, or the
    process awaiting it); sent before the saga reaches the wait, it is kept until then.
    Exit 1 if the saga is unknown or already finished (nothing would consume the signal)."""
    execute(lambda: run_async(partial(_signal, saga_id.strip(), name, payload, signal_id)))


async def _signal(
    saga_id: str, name: str, payload: str, signal_id: str | None, storages: Storages
) -> int:
    try:
        data: Any = json.loads(payload)
    except json.JSONDecodeError as exc:
        fail(f"--payload is not valid JSON ({exc.msg} at character {exc.pos}); give an object "
             'such as \'{"approved": true}\'')
    if not isinstance(data, dict):
        fail(f"--payload must be a JSON object (merged into the context), got "
             f"{type(data).__name__}; e.g. '{{\"approved\": true}}'")
    config = storages.config()
    try:
        stored = await signal(saga_id, name, data, signal_id=signal_id, config=config)
    except SagaNotFoundError:
        fail(f"no saga with id {saga_id!r} in {config.write_storage!r}; `sagaz sagas list` "
             "shows the ids", ExitCode.FAILED)
    except SignalRefusedError as exc:
        fail(str(exc), ExitCode.FAILED)
    if stored:
        out.print(f"signal {escape(name)} sent to saga {saga_id}")
    else:
        out.print(f"signal {escape(signal_id or '')} was already sent to saga {saga_id}: "
                  "nothing changed")
    return ExitCode.OK
