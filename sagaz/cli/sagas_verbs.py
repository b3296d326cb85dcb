"""``sagaz sagas cancel | retry | resume | check-versions``: the operator verbs and the version
check of a deploy pipeline (sagaz/engine/operator.py, sagaz/engine/versions.py).

The verbs write through the primary storage and record who (``--actor``, else the OS user) and
why (``--reason``) in the saga's history. They need the saga's definition to run compensations
or steps: ``--import MODULE`` imports the modules that register the sagas.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Annotated

import typer
from rich.table import Table

from sagaz.config import SagaConfig
from sagaz.engine.operator import VerbOutcome, cancel, check_versions, resume, retry
from sagaz.engine.types import SagaStatus
from sagaz.engine.versions import Choice
from sagaz.errors import OperatorError, SagaNotFoundError

from .common import ExitCode, Storages, execute, fail, run_async
from .loading import import_module, split_module_names
from .output import escape, out, table_console

__all__ = ["IMPORT_OPTION", "Imports", "import_modules", "register_verbs", "stuck_table"]

IMPORT_HELP = ("Import MODULE first, so the sagas it defines are registered (repeatable, or a "
               "comma-separated list).")
IMPORT_OPTION = typer.Option("--import", "-i", envvar="SAGAZ_SAGAS_IMPORTS", metavar="MODULE",
                             help=IMPORT_HELP)
Imports = Annotated[list[str] | None, IMPORT_OPTION]
Reason = Annotated[str | None, typer.Option(
    "--reason", envvar="SAGAZ_SAGAS_REASON", help="Why: recorded in the saga's history.")]
Actor = Annotated[str | None, typer.Option(
    "--actor", envvar="SAGAZ_SAGAS_ACTOR",
    help="Who: recorded in the saga's history (default: the OS user running the command).")]
SagaId = Annotated[str, typer.Argument(metavar="ID", help="The saga id (a UUID).")]


def import_modules(imports: list[str] | None) -> None:
    for name in split_module_names(imports or []):
        import_module(name)


def _verb(
    imports: list[str] | None, act: Callable[[SagaConfig], Awaitable[VerbOutcome]],
    storages: Storages,
) -> Awaitable[int]:
    async def body() -> int:
        import_modules(imports)
        try:
            outcome = await act(storages.config())
        except OperatorError as exc:
            fail(str(exc), ExitCode.FAILED)
        except SagaNotFoundError as exc:
            fail(f"{exc}; `sagaz sagas list` shows the ids", ExitCode.FAILED)
        out.print(f"saga {outcome.saga_id}: {escape(outcome.message)}", soft_wrap=True)
        return ExitCode.FAILED if outcome.status is SagaStatus.FAILED else ExitCode.OK

    return body()


def cancel_command(saga_id: SagaId, reason: Reason = None, actor: Actor = None,
                   imports: Imports = None) -> None:
    """Cancel a running or waiting saga; what completed is compensated.

    Its executor is fenced and stops at its next step boundary, then what completed is
    compensated (the saga ends COMPENSATED, or FAILED if a
    compensation fails). Without the saga's definition (--import), the request is recorded and
    a worker that has it compensates the saga. Exit 1: refused (the saga is finished or already
    compensating), unknown id, or a compensation failed."""
    sid = saga_id.strip()
    execute(lambda: run_async(partial(_verb, imports, lambda config: cancel(
        sid, reason=reason, actor=actor, config=config))))


def retry_command(saga_id: SagaId, reason: Reason = None, actor: Actor = None,
                  imports: Imports = None) -> None:
    """Retry the failed compensations of a FAILED saga.

    Runs again the compensations that did not complete. Exit 1: the saga is not FAILED,
    unknown id, or a compensation failed again."""
    sid = saga_id.strip()
    execute(lambda: run_async(partial(_verb, imports, lambda config: retry(
        sid, reason=reason, actor=actor, config=config))))


def resume_command(
    saga_id: SagaId,
    definition: Annotated[str, typer.Option(
        "--definition", "-d", envvar="SAGAZ_SAGAS_DEFINITION", metavar="VERSION",
        help="The registered definition to continue with: its version label (Saga(version=..."
             ")) or fingerprint (`sagaz sagas check-versions` shows both).")],
    reason: Reason = None, actor: Actor = None, imports: Imports = None,
    force: Annotated[bool, typer.Option(
        "--force", envvar="SAGAZ_SAGAS_FORCE",
        help="Resume even though a step that may have been running when the saga's executor "
             "stopped does not exist in the named definition: its effect, if any, stays.")] = False,
) -> None:
    """Continue a stuck saga with the registered definition you name.

    The saga records it as its definition and is recovered with it. Refused while an executor holds
    the saga, or when that definition lacks a step the saga has started. Exit 1: refused,
    unknown id, or the saga ended FAILED."""
    sid = saga_id.strip()
    execute(lambda: run_async(partial(_verb, imports, lambda config: resume(
        sid, definition.strip(), reason=reason, actor=actor, force=force, config=config))))


def check_versions_command(
    imports: Imports = None,
    as_json: Annotated[bool, typer.Option(
        "--json", envvar="SAGAZ_SAGAS_JSON", help="Print JSON instead of a table.")] = False,
) -> None:
    """Which registered definition would run each unfinished saga, and what differs.

    Run it in a deploy pipeline with the new code's modules (--import) before that code takes
    over. Exit 1 if any saga would be stuck (its definition is no longer registered and none
    is declared compatible)."""
    execute(lambda: run_async(partial(_check, imports, as_json)))


async def _check(imports: list[str] | None, as_json: bool, storages: Storages) -> int:
    import_modules(imports)
    choices = await check_versions(storages.config())
    stuck = [c for c in choices if c.stuck]
    if as_json:
        sys.stdout.write(json.dumps([_choice_json(c) for c in choices], indent=2) + "\n")
    elif not choices:
        out.print("no unfinished sagas")
    else:
        table_console().print(stuck_table(choices, "unfinished sagas"))
        out.print(f"{len(stuck)} of {len(choices)} unfinished sagas would be stuck"
                  if stuck else f"all {len(choices)} unfinished sagas have a definition")
    return ExitCode.FAILED if stuck else ExitCode.OK


def stuck_table(choices: list[Choice], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("id", no_wrap=True, min_width=36)
    for column in ("name", "started with", "runs with", "why / what differs"):
        table.add_column(column, overflow="fold")
    for choice in choices:
        table.add_row(choice.saga_id, escape(choice.saga_name), escape(choice.started_with),
                      "[red]stuck[/]" if choice.stuck else escape(choice.runs_with),
                      escape(choice.how))
    return table


def _choice_json(choice: Choice) -> dict[str, object]:
    return {"id": choice.saga_id, "name": choice.saga_name, "started_with": choice.started_with,
            "runs_with": None if choice.stuck else choice.runs_with, "stuck": choice.stuck,
            "why": choice.how}


def register_verbs(app: typer.Typer) -> None:
    app.command("cancel")(cancel_command)
    app.command("retry")(retry_command)
    app.command("resume")(resume_command)
    app.command("check-versions")(check_versions_command)
