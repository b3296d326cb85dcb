"""Progress display of multi-stage commands (`dev up`, backups, restores): each stage and how
long it took."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import Progress, SpinnerColumn, TextColumn

from .output import escape, out

__all__ = ["stage_printer"]


@contextmanager
def stage_printer(title: str) -> Iterator[Callable[[str], None]]:
    """A progress callback showing each stage and how long it took: a live display on a
    terminal, one line per stage otherwise (logs, CI)."""
    started = [time.monotonic()]
    if out.is_terminal:
        progress = Progress(SpinnerColumn(finished_text="[green]✓[/]"),
                            TextColumn("{task.description}"),
                            TextColumn("[dim]{task.fields[took]}[/]"), console=out)
        current: list[Any] = []

        def finish() -> None:
            if current:
                progress.update(current[0], completed=1,
                                took=f"{time.monotonic() - started[0]:.2f} s")

        def stage(text: str) -> None:
            finish()
            started[0] = time.monotonic()
            current[:] = [progress.add_task(escape(text), total=1, took="")]

        out.print(title, soft_wrap=True)
        with progress:
            yield stage
            finish()
        return

    open_line = [False]

    def close_line() -> None:
        if open_line[0]:
            out.print(f"{time.monotonic() - started[0]:.2f} s")
            open_line[0] = False

    def plain(text: str) -> None:
        close_line()
        started[0] = time.monotonic()
        out.print(f"  {escape(text)} ... ", end="", soft_wrap=True)
        open_line[0] = True

    out.print(title, soft_wrap=True)
    try:
        yield plain
    except BaseException:
        if open_line[0]:
            out.print("[red]failed[/]")
        raise
    close_line()
