"""One command at a time on a cluster directory.

``sagaz dev up``, ``down``, ``restart`` and ``sagaz ha promote|rejoin`` read cluster.json,
start and stop processes and write cluster.json again; two of them at once on one directory
would both run initdb into the same data directory, or start the same server twice. Each takes
an exclusive ``flock`` on ``DIR/.lock`` (mode 0600, holding the holder's pid for the message of
whoever waits). The kernel releases it when the holder exits, however it exits: a crashed
command never leaves the directory locked.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LOCK_FILE", "DirectoryBusy", "directory_lock", "locked_by_a_command"]

LOCK_FILE = ".lock"


class DirectoryBusy(Exception):
    """Another command holds the lock (raised only with ``wait=False``)."""


@contextmanager
def directory_lock(directory: Path,
                   on_wait: Callable[[int | None], None] = lambda _: None, *,
                   wait: bool = True) -> Iterator[None]:
    """Hold the lock of ``directory`` (which must exist) for the ``with`` block. When another
    command holds it, ``on_wait(its pid or None)`` is called once and the lock is waited for;
    with ``wait=False``, :class:`DirectoryBusy` is raised instead (for background work that can
    simply try again later)."""
    path = directory / LOCK_FILE
    told = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise DirectoryBusy(str(directory)) from None
                if not told:
                    on_wait(_holder(fd))
                    told = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            # The holder may have deleted or replaced the file meanwhile (`down --purge` deletes
            # the directory): a lock on a file nobody else opens excludes no one, so take the
            # one at ``path`` again.
            if _same_file(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        directory.mkdir(parents=True, exist_ok=True)
    try:
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        # Closing releases the lock. The file stays: unlinking it would let a waiter lock the
        # unlinked file while a newcomer locks a new one.
        os.close(fd)


def locked_by_a_command(directory: Path) -> bool:
    """Whether a command holds the lock of ``directory`` right now (without waiting for it).
    The supervisor skips its pass then: the command is rewriting the files it would read."""
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases the lock if it was taken
    return False


def _holder(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)
