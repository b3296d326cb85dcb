"""Files that hold secrets or state (passwords, sagas, a cluster's layout, logs that may quote
them): created private to their owner (files 0600, directories 0700) from the first byte, and
the warning for an existing one that others may read.

Private "from the first byte": a file is created with its final mode by ``os.open`` (never
written first and chmod-ed after), so there is no moment in which another user could open it.
The process umask is left alone: an application embedding sagaz owns it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = [
    "PRIVATE_DIR_MODE", "PRIVATE_FILE_MODE", "HoldsPrivateFiles", "create_private_file",
    "loose_mode_warnings", "make_private_dir", "open_private_append", "write_private_file",
]

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


@runtime_checkable
class HoldsPrivateFiles(Protocol):
    """A storage (or any part) keeping its state in local files: the CLI checks their modes."""

    def private_files(self) -> list[Path]:
        """The files that exist now and should be readable by their owner only."""
        ...


def create_private_file(path: Path) -> bool:
    """Create ``path`` empty with mode 0600 if it does not exist; True when this call created it.
    An existing file is left as it is (its mode is its owner's choice, which the CLI warns
    about when it is looser)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def write_private_file(path: Path, text: str, *, atomic: bool = False) -> None:
    """Write ``text`` to ``path`` with mode 0600 (also when it existed with another mode).
    ``atomic``: through a temporary file renamed over ``path``, so that a reader never sees half
    of it."""
    target = path.with_name(f".{path.name}.tmp") if atomic else path
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), PRIVATE_FILE_MODE)  # an existing file keeps its mode otherwise
        out.write(text)
    if atomic:
        os.replace(target, path)


def open_private_append(path: Path) -> int:
    """A file descriptor appending to ``path`` (a log), created 0600 when missing."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE_MODE)
    os.fchmod(fd, PRIVATE_FILE_MODE)
    return fd


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents, with the default mode) and make it 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    path.chmod(PRIVATE_DIR_MODE)


def loose_mode_warnings(paths: Iterable[Path]) -> list[str]:
    """One message per existing file (or directory) among ``paths`` that users other than its
    owner may read or write, saying how to fix it."""
    messages = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue
        mode = stat.S_IMODE(st.st_mode)
        if not mode & 0o077:
            continue
        wanted = PRIVATE_DIR_MODE if stat.S_ISDIR(st.st_mode) else PRIVATE_FILE_MODE
        messages.append(
            f"{path} has mode {mode:04o}: other users of this machine can read it, and it holds "
            f"secrets or saga state; run `chmod {wanted:o} {path}`")
    return messages
