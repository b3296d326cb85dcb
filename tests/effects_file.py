"""The append-only effects file of the crash tests: every saga action and compensation appends
one line, fsynced before it returns, so the file survives a SIGKILL and tells the test which side
effects really happened (also those of a process that died). Imported by the tests and by the
child processes they kill (killed_child.child_env puts this directory on their path)."""

from __future__ import annotations

import os
from pathlib import Path


def append_line(path: str | Path, line: str) -> None:
    """Append ``line`` durably: it is on disk when this returns, whatever happens next."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{line}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(path: str | Path) -> list[str]:
    """The lines of an effects or marker file ([] if it does not exist yet)."""
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
