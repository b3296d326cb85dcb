"""``sagaz run`` (run one saga with a JSON context) and ``sagaz show`` (its Mermaid diagram)."""

from __future__ import annotations

import json
import sys
from functools import partial
from typing import Annotated, Any

import typer

from sagaz.engine.definition import Saga
from sagaz.errors import SagaFailedError

from .common import ExitCode, Storages, execute, fail, run_async
from .loading import load_saga
from .output import err_console, printable

__all__ = ["parse_context", "read_context_text", "run", "show"]

SPEC_HELP = "The saga as MODULE:ATTRIBUTE: a sagaz.Saga instance or a Saga subclass."


CTX_HELP = ("The initial context, a JSON object: inline, @FILE to read it from a file, or - to "
            "read it from stdin (for contexts too large for the command line).")


def read_context_text(value: str) -> tuple[str, str]:
    """The JSON text --ctx names and where it came from (for messages): the value itself, the
    file after ``@``, or stdin for ``-``. A context of megabytes does not fit in an argument list
    (the kernel caps it), so large ones come from a file or a pipe."""
    if value == "-":
        return sys.stdin.read(), "--ctx - (stdin)"
    if value.startswith("@"):
        path = value[1:]
        if not path:
            fail("--ctx @ needs a file name: --ctx @context.json (or --ctx - for stdin)")
        try:
            with open(path, encoding="utf-8") as file:
                return file.read(), f"--ctx {value}"
        except OSError as exc:
            fail(f"--ctx {value}: cannot read {path!r} ({exc.strerror or exc}); name a readable "
                 "JSON file, or pass the JSON itself")
        except UnicodeDecodeError as exc:
            fail(f"--ctx {value}: {path!r} is not UTF-8 text ({exc.reason} at byte {exc.start})")
    return value, "--ctx"


def parse_context(text: str, source: str = "--ctx") -> dict[str, Any]:
    """The --ctx value as a dict, or a one-line error saying what is wrong with it."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{source} is not valid JSON ({exc}); pass a JSON object such as "
             """--ctx '{"order_id": 42}'""")
    if not isinstance(value, dict):
        fail(f"{source} must be a JSON object such as '{{\"order_id\": 42}}', got a JSON "
             f"{type(value).__name__}")
    return value


def run(
    spec: Annotated[str, typer.Argument(metavar="MODULE:ATTR", help=SPEC_HELP)],
    ctx: Annotated[str, typer.Option(
        "--ctx", envvar="SAGAZ_RUN_CTX", metavar="JSON|@FILE|-", help=CTX_HELP)] = "{}",
    saga_id: Annotated[str | None, typer.Option(
        "--saga-id", envvar="SAGAZ_RUN_SAGA_ID", metavar="UUID",
        help="Run under this id; running an id again returns the first run's outcome.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(
        "--idempotency-key", envvar="SAGAZ_RUN_IDEMPOTENCY_KEY", metavar="KEY",
        help="Any string; the same key runs the saga once (instead of --saga-id).")] = None,
) -> None:
    """Run a saga to its end. Prints the final context as JSON (exit 0); if a step failed and
    the saga was compensated, prints why to stderr (exit 1)."""

    def body() -> int:
        context = parse_context(*read_context_text(ctx))
        saga = load_saga(spec)
        return run_async(partial(_run, saga, context, saga_id, idempotency_key))

    execute(body)


async def _run(
    saga: Saga, context: dict[str, Any], saga_id: str | None, idempotency_key: str | None,
    storages: Storages,
) -> int:
    storages.config(saga)  # closed at the end, whichever config the saga runs with
    try:
        final = await saga.run(context, saga_id=saga_id, idempotency_key=idempotency_key)
    except SagaFailedError as exc:
        err_console.print(
            f"saga {exc.saga_name!r} {exc.saga_id}: {exc.status.value}\n"
            f"  failed step: {printable(exc.failed_step or '-')}\n"
            f"  error: {printable(exc.error or '-', multiline=True)}", markup=False,
            soft_wrap=True)
        for step, comp_error in sorted(exc.compensation_errors.items()):
            err_console.print(f"  compensation of {step!r} failed: "
                              f"{printable(str(comp_error), multiline=True)}",
                              markup=False, soft_wrap=True)
        return ExitCode.FAILED
    # Plain JSON on stdout, no rich markup, so it can be piped into jq or a file.
    sys.stdout.write(json.dumps(final, indent=2) + "\n")
    return ExitCode.OK


def show(
    spec: Annotated[str, typer.Argument(metavar="MODULE:ATTR", help=SPEC_HELP)],
) -> None:
    """Print the saga's steps, dependencies and compensations as a Mermaid flowchart
    (plain text: redirect it to a .mmd file or paste it into Markdown)."""

    def body() -> int:
        saga = load_saga(spec)
        sys.stdout.write(saga.to_mermaid())
        return ExitCode.OK

    execute(body)
