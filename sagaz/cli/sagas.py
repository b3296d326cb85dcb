"""``sagaz sagas list`` and ``sagaz sagas show``: inspect saga state and history through the read
storage (the analytics replica when SAGAZ_ANALYTICS_URL is set). The operator verbs and the
version check live in :mod:`.sagas_verbs`."""

from __future__ import annotations

import json
import sys
from functools import partial
from typing import Annotated, Any

import typer
from rich.table import Table

from sagaz.engine.operator import check_versions
from sagaz.engine.types import SagaState, SagaStatus
from sagaz.storage.audit import AuditEntry

from .common import MAX_LIMIT, MAX_OFFSET, ExitCode, Storages, execute, fail, run_async
from .output import escape, format_time, out, table_console
from .sagas_verbs import Imports, import_modules, register_verbs, stuck_table

__all__ = ["sagas_app"]

sagas_app = typer.Typer(
    name="sagas", no_args_is_help=True,
    help="Inspect sagas (list, show), check them against the registered definitions "
         "(check-versions), and act on one (cancel, retry, resume, signal).")

JSON_HELP = "Print JSON instead of a table (for scripts)."
STUCK = "STUCK"
_STATUSES = (*(s.value for s in SagaStatus), STUCK)


@sagas_app.command("list")
def list_sagas(
    status: Annotated[str | None, typer.Option(
        "--status", envvar="SAGAZ_SAGAS_STATUS", metavar="|".join(_STATUSES),
        help="Only sagas with this status (any case). STUCK: unfinished sagas that no "
             "registered definition would run (give --import).")] = None,
    limit: Annotated[int, typer.Option(
        "--limit", min=1, max=MAX_LIMIT, envvar="SAGAZ_SAGAS_LIMIT",
        help="At most this many sagas.")] = 50,
    offset: Annotated[int, typer.Option(
        "--offset", min=0, max=MAX_OFFSET, envvar="SAGAZ_SAGAS_OFFSET",
        help="Skip this many (paging).")] = 0,
    as_json: Annotated[bool, typer.Option(
        "--json", envvar="SAGAZ_SAGAS_JSON", help=JSON_HELP)] = False,
    imports: Imports = None,
) -> None:
    """List sagas, newest first."""
    wanted = None if status is None else status.strip().upper()
    if wanted is not None and wanted not in _STATUSES:
        execute(lambda: fail(f"unknown --status {status!r}; use one of {', '.join(_STATUSES)}"))
    if wanted == STUCK:
        execute(lambda: run_async(partial(_list_stuck, imports, as_json)))
    chosen = None if wanted is None else SagaStatus(wanted)
    execute(lambda: run_async(partial(_list, chosen, limit, offset, as_json)))


async def _list_stuck(imports: list[str] | None, as_json: bool, storages: Storages) -> int:
    import_modules(imports)
    stuck = [c for c in await check_versions(storages.config()) if c.stuck]
    if as_json:
        _print_json([{"id": c.saga_id, "name": c.saga_name, "started_with": c.started_with,
                      "why": c.how} for c in stuck])
    elif not stuck:
        out.print("no stuck sagas")
    else:
        table_console().print(stuck_table(stuck, f"stuck sagas ({len(stuck)})"))
    return ExitCode.OK


async def _list(
    status: SagaStatus | None, limit: int, offset: int, as_json: bool, storages: Storages
) -> int:
    storage = storages.config().read_storage
    found = await storage.list_sagas(status=status, limit=limit, offset=offset)
    if as_json:
        _print_json([_saga_json(s) for s in found])
        return ExitCode.OK
    if not found:
        which = f" with status {status.value}" if status else ""
        out.print(f"no sagas{which} in {escape(repr(storage))}")
        return ExitCode.OK
    table = Table(title=f"sagas ({len(found)} shown, newest first)", title_justify="left")
    # The id is what `sagaz sagas show` needs: never wrap or elide it, however narrow the terminal.
    table.add_column("id", no_wrap=True, min_width=36)
    table.add_column("name", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("failed step")
    table.add_column("created")
    table.add_column("updated")
    for saga in found:
        table.add_row(saga.saga_id, escape(saga.saga_name), _styled(saga.status),
                      escape(saga.failed_step or "-"), format_time(saga.created_at),
                      format_time(saga.updated_at))
    table_console().print(table)
    return ExitCode.OK


@sagas_app.command("show")
def show_saga(
    saga_id: Annotated[str, typer.Argument(metavar="ID", help="The saga id (a UUID).")],
    as_json: Annotated[bool, typer.Option(
        "--json", envvar="SAGAZ_SAGAS_JSON", help=JSON_HELP)] = False,
) -> None:
    """Show one saga: status, context, each step's status, attempts and errors, and its history
    (every status transition and failed attempt, oldest first)."""
    execute(lambda: run_async(partial(_show, saga_id.strip(), as_json)))


async def _show(saga_id: str, as_json: bool, storages: Storages) -> int:
    storage = storages.config().read_storage
    saga = await storage.load(saga_id)
    if saga is None:
        fail(f"no saga with id {saga_id!r} in {storage!r}; `sagaz sagas list` shows the ids",
             ExitCode.FAILED)
    history = await storage.get_history(saga_id)
    if as_json:
        _print_json({**_saga_json(saga, with_steps=True),
                     "history": [_entry_json(e) for e in history]})
        return ExitCode.OK
    fields = [
        ("id", saga.saga_id), ("name", escape(saga.saga_name)), ("status", _styled(saga.status)),
        ("created", format_time(saga.created_at)), ("updated", format_time(saga.updated_at)),
        ("idempotency key", escape(saga.idempotency_key or "-")),
        ("failed step", escape(saga.failed_step or "-")),
        ("error", escape(saga.error or "-", multiline=True)),
        ("definition", escape(_definition_label(saga))),
    ]
    if saga.status is SagaStatus.WAITING:
        fields.append(("due", format_time(saga.wake_at) if saga.wake_at is not None
                       else "when signalled"))
    if not saga.status.is_final:
        # Who runs it and until when: tells a live saga from one waiting for recovery.
        fields.append(("lease", f"{escape(saga.lease_owner or '-')} until "
                                f"{format_time(saga.lease_expires_at)}"))
    for label, value in fields:
        out.print(f"[bold]{label + ':':<17}[/]{value}", soft_wrap=True)
    out.print(f"[bold]{'context:':<17}[/]{escape(json.dumps(saga.context))}", soft_wrap=True)
    table = Table(title="steps", title_justify="left")
    for column in ("step", "status", "attempts", "started", "error", "compensation error"):
        table.add_column(column)
    for step in sorted(saga.steps.values(), key=lambda s: s.started_at or float("inf")):
        table.add_row(escape(step.name), step.status.value, str(step.attempts),
                      format_time(step.started_at), escape(step.error or "-", multiline=True),
                      escape(step.compensation_error or "-", multiline=True))
    table_console().print(table)
    table_console().print(_history_table(history))
    return ExitCode.OK


def _definition_label(saga: SagaState) -> str:
    if saga.definition_fingerprint is None:
        return "- (started before sagas recorded it)"
    version = f"v{saga.definition_version} " if saga.definition_version is not None else ""
    return f"{version}({saga.definition_fingerprint})"


def _what(entry: AuditEntry) -> str:
    """The error of a row, or who did an operator verb and why."""
    actor = entry.details.get("actor")
    if actor is None:
        return entry.error or "-"
    reason = entry.details.get("reason")
    return f"by {actor}" + (f": {reason}" if reason else "")


def _history_table(history: list[AuditEntry]) -> Table:
    table = Table(title="history (oldest first)", title_justify="left")
    for column in ("time", "event", "step", "attempt", "error"):
        table.add_column(column)
    for entry in history:
        attempt = entry.attempt
        table.add_row(format_time(entry.at, millis=True), escape(entry.event),
                      escape(entry.step or "-"), "-" if attempt is None else str(attempt),
                      escape(_what(entry), multiline=True))
    return table


def _entry_json(entry: AuditEntry) -> dict[str, Any]:
    return {"at": entry.at, "event": entry.event, **entry.details}


_STATUS_STYLE = {
    SagaStatus.COMPLETED: "green", SagaStatus.COMPENSATED: "yellow", SagaStatus.FAILED: "red",
    SagaStatus.COMPENSATING: "magenta", SagaStatus.RUNNING: "cyan",
}


def _styled(status: SagaStatus) -> str:
    style = _STATUS_STYLE.get(status)
    return f"[{style}]{status.value}[/]" if style else status.value


def _saga_json(saga: SagaState, with_steps: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": saga.saga_id, "name": saga.saga_name, "status": saga.status.value,
        "failed_step": saga.failed_step, "error": saga.error,
        "idempotency_key": saga.idempotency_key, "created_at": saga.created_at,
        "updated_at": saga.updated_at, "context": saga.context,
        "definition_fingerprint": saga.definition_fingerprint,
        "definition_version": saga.definition_version,
        "cancel_requested": saga.cancel_requested,
    }
    if with_steps:
        data["steps"] = [
            {"name": s.name, "status": s.status.value, "attempts": s.attempts,
             "started_at": s.started_at, "finished_at": s.finished_at, "error": s.error,
             "compensation_error": s.compensation_error}
            for s in saga.steps.values()
        ]
    return data


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


register_verbs(sagas_app)


def _register_signal() -> None:
    """The signal verb lives in a module of its own."""
    from .signal import signal_saga

    sagas_app.command("signal")(signal_saga)


_register_signal()
