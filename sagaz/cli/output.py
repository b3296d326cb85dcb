"""Terminal output: the consoles, one-line errors and warnings, time formatting and the listener
that shows a saga's progress live."""

from __future__ import annotations

import os
import re
import time
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.markup import escape as escape_markup

from sagaz.engine.listeners import SagaListener

__all__ = [
    "LiveListener", "err_console", "escape", "format_time", "out", "printable", "print_error",
    "print_warning", "table_console",
]

# Rich resolves sys.stdout / sys.stderr at each write, so these also follow redirections made
# after import (pytest's capture, main() called in-process). highlight=False: rich would otherwise
# colour numbers and UUIDs at random inside messages.
out = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


# What a terminal would act on instead of showing: C0 controls but tab (ESC starts the ANSI
# sequences that recolour, move the cursor, retitle the window or write to the clipboard; CR
# overwrites the line), DEL, C1 controls (0x9b is a one-byte ESC [), and the bidirectional
# overrides that make text read otherwise than it is stored. Newline is handled apart.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\r": "\\r", "\n": "\\n", "\x1b": "\\x1b"}


def _escaped(match: re.Match[str]) -> str:
    char = match[0]
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, *, multiline: bool = False) -> str:
    """``text`` (a server's or broker's message, user data) with every control character a
    terminal would act on shown as an escape (``\\x1b``, ``\\r``, ``\\u202e``), so that
    printing it can neither forge output nor drive the terminal. Newlines stay only when
    ``multiline`` (a message with a log excerpt); elsewhere they are shown as ``\\n``."""
    if multiline:
        return _CONTROLS.sub(_escaped, text)
    return _CONTROLS.sub(_escaped, text.replace("\n", "\\n"))


def escape(text: str, *, multiline: bool = False) -> str:
    """:func:`printable`, and safe inside rich markup: for every piece of outside text that goes
    into ``console.print``."""
    return escape_markup(printable(text, multiline=multiline))


def table_console() -> Console:
    """The console for tables. Piped into a file or grep there is no width to respect, and rich's
    default of 80 columns would wrap every row, so rows stay whole (an explicit COLUMNS wins)."""
    if out.is_terminal or "COLUMNS" in os.environ:
        return out
    return Console(highlight=False, width=200)


def print_error(message: str) -> None:
    # soft_wrap: an error stays one line however narrow the terminal, so it can be grepped.
    err_console.print(f"[bold red]error:[/] {escape(message, multiline=True)}", soft_wrap=True)


def print_warning(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message, multiline=True)}", soft_wrap=True)


def format_time(timestamp: float | None, *, millis: bool = False) -> str:
    """Local time; ``millis`` for events that happen within one second (a saga's history)."""
    if timestamp is None:
        return "-"
    moment = datetime.fromtimestamp(timestamp)
    if millis:
        return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


_STATUS_STYLE = {"COMPLETED": "bold green", "COMPENSATED": "bold yellow", "FAILED": "bold red"}


class LiveListener(SagaListener):
    """Prints each step, compensation and final status as the engine reports them."""

    def __init__(self, console: Console | None = None):
        self.console = console or out
        self._step_started: dict[tuple[str, str], float] = {}

    def _say(self, text: str) -> None:
        self.console.print(text, soft_wrap=True)

    def saga_started(self, saga_name: str, saga_id: str, context: dict[str, Any]) -> None:
        self._say(f"  saga [bold]{escape(saga_name)}[/] started  [dim]id {saga_id}[/]")

    def step_started(self, saga_name: str, saga_id: str, step: str, attempt: int) -> None:
        self._step_started[(saga_id, step)] = time.monotonic()
        retry = f" (attempt {attempt})" if attempt > 1 else ""
        self._say(f"  [cyan]->[/] step [bold]{escape(step)}[/]{retry} ...")

    def step_completed(self, saga_name: str, saga_id: str, step: str, duration: float) -> None:
        self._say(f"  [green]ok[/] step [bold]{escape(step)}[/] completed in {_ms(duration)}")

    def step_failed(
        self, saga_name: str, saga_id: str, step: str, error: BaseException, final: bool
    ) -> None:
        then = "giving up" if final else "will retry"
        self._say(f"  [red]x[/]  step [bold]{escape(step)}[/] failed: "
                  f"{escape(type(error).__name__)}: {escape(str(error), multiline=True)} "
                  f"({then})")

    def compensation_started(self, saga_name: str, saga_id: str, step: str) -> None:
        self._say(f"  [yellow]<-[/] compensating step [bold]{escape(step)}[/] ...")

    def compensation_completed(
        self, saga_name: str, saga_id: str, step: str, error: BaseException | None
    ) -> None:
        if error is None:
            self._say(f"  [yellow]ok[/] compensated step [bold]{escape(step)}[/]")
        else:
            self._say(f"  [bold red]!![/] compensation of step [bold]{escape(step)}[/] failed: "
                      f"{escape(type(error).__name__)}: "
                      f"{escape(str(error), multiline=True)}")

    def saga_finished(self, saga_name: str, saga_id: str, status: str, duration: float) -> None:
        style = _STATUS_STYLE.get(status, "bold")
        self._say(f"  saga [bold]{escape(saga_name)}[/] finished: [{style}]{status}[/] "
                  f"in {_ms(duration)}")
