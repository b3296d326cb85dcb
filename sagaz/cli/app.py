"""The ``sagaz`` command: the typer app, global options (logging), and the in-process entry
point :func:`main` that tests and embedding programs call instead of a subprocess."""

from __future__ import annotations

import logging
import sys
from enum import StrEnum
from typing import Annotated

import typer

import sagaz
from sagaz.observability.logs import JsonFormatter

from . import common
from .backup import backup_app
from .benchmark import benchmark_app
from .benchmark_report import report_command as benchmark_report_command
from .db import db_app
from .demo import demo
from .dev import dev_app
from .dev_restore import restore_command as dev_restore_command
from .dev_secrets import rotate_secrets_command
from .ha import ha_app
from .init import init
from .metrics import metrics_app
from .outbox import outbox_app
from .output import printable
from .running import run as run_command
from .running import show
from .sagas import sagas_app
from .worker import worker

__all__ = ["app", "main", "run"]

HELP = """\
sagaz runs **sagas**: multi-step business transactions in which every step that completed is
undone by its compensation when a later step fails, so a failure midway leaves no half-done work
behind. Each step's outcome is committed before the next one starts (embedded SQLite in
./sagaz.db by default; set SAGAZ_STORAGE_URL to change it), so a run whose process died is
finished by `sagaz worker`.

Start with `sagaz demo`. Every option can also be set with a SAGAZ_* environment variable (each
command's --help names it).
"""

EXIT_CODES = """\
**Exit codes**

* 0: success
* 1: the saga failed (and was compensated), the saga id does not exist, or a worker pass left
  sagas unfinished
* 2: invalid usage or configuration: arguments, a SAGAZ_* variable, a module or saga that cannot
  be loaded, an invalid saga definition or context
* 3: storage error (database unreachable, or it refused the operation)
* 130: interrupted
"""

app = typer.Typer(
    name="sagaz", help=HELP, epilog=EXIT_CODES, no_args_is_help=True,
    rich_markup_mode="markdown", pretty_exceptions_enable=False, add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


@app.callback()
def _global_options(
    log_level: Annotated[LogLevel, typer.Option(
        "--log-level", envvar="SAGAZ_LOG_LEVEL", case_sensitive=False,
        help="Log messages of this level and above go to stderr.")] = LogLevel.WARNING,
    log_format: Annotated[LogFormat, typer.Option(
        "--log-format", envvar="SAGAZ_LOG_FORMAT", case_sensitive=False,
        help="text: one readable line per record. json: one JSON object per line with ts, "
             "level, logger, message, saga_id, step, action and the record's other fields "
             "(for log pipelines).")] = LogFormat.TEXT,
) -> None:
    configure_logging(log_level.value, log_format.value)


# The handler and root level main() installed, so it can undo them: a program calling main()
# in-process keeps its own logging setup afterwards.
_installed: tuple[logging.Handler, int] | None = None


def configure_logging(level: str, log_format: str = "text") -> None:
    """Send log records to stderr. Done here, never in the library: an application embedding
    sagaz owns its logging."""
    global _installed
    restore_logging()
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
        common.tag_sagas_in_logs(True)
    else:
        handler.setFormatter(
            _PrintableFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    _installed = (handler, root.level)
    root.addHandler(handler)
    root.setLevel(level)


class _PrintableFormatter(logging.Formatter):
    """Log lines quote brokers' and servers' errors: their control characters are shown, not
    sent to the terminal (tracebacks keep their newlines)."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record), multiline=True)


def restore_logging() -> None:
    global _installed
    if _installed is not None:
        handler, level = _installed
        root = logging.getLogger()
        root.removeHandler(handler)
        root.setLevel(level)
        _installed = None
    common.tag_sagas_in_logs(False)


@app.command()
def version() -> None:
    """Print the version of sagaz."""
    typer.echo(f"sagaz {sagaz.__version__}")


app.command("demo")(demo)
app.command("init")(init)
app.command("run")(run_command)
app.command("show")(show)
app.command("worker")(worker)
app.add_typer(sagas_app, name="sagas")
app.add_typer(db_app, name="db")
app.add_typer(outbox_app, name="outbox")
app.add_typer(metrics_app, name="metrics")
benchmark_app.command("report")(benchmark_report_command)  # its own module, like dev's
app.add_typer(benchmark_app, name="benchmark")
dev_app.command("rotate-secrets")(rotate_secrets_command)  # its own module: dev.py is full
dev_app.command("restore")(dev_restore_command)
app.add_typer(dev_app, name="dev")
app.add_typer(ha_app, name="ha")
app.add_typer(backup_app, name="backup")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``) and return the exit code instead of
    exiting the process."""
    try:
        app(args=argv, prog_name="sagaz")
    except SystemExit as exc:
        # typer ends every invocation, successful or not, with SystemExit.
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    finally:
        restore_logging()
    return 0


def run() -> None:
    """Console-script entry point (``sagaz = "sagaz.cli:run"``)."""
    sys.exit(main())
