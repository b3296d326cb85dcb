"""Running database processes as an unprivileged OS user.

``initdb`` and ``postgres`` refuse to run as root, and PgBouncer should not either. When sagaz runs
as root (CI containers do), every process of the local cluster runs as ``SAGAZ_OS_USER`` (default
``postgres``, which the Debian packages create) and the files it needs are handed to that user.
As any other user, processes run as that user itself.
"""

from __future__ import annotations

import os
import pwd
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sagaz.errors import ConfigurationError

__all__ = ["ServiceUser", "check_reachable", "process_alive", "service_user"]


@dataclass(frozen=True)
class ServiceUser:
    name: str
    uid: int
    gid: int

    @property
    def is_current(self) -> bool:
        return self.uid == os.getuid()

    def preexec(self) -> Callable[[], None] | None:
        """A ``subprocess`` ``preexec_fn`` that switches to this user (None when already it)."""
        if self.is_current:
            return None
        uid, gid, name = self.uid, self.gid, self.name

        def switch() -> None:
            os.setgid(gid)
            os.initgroups(name, gid)
            os.setuid(uid)

        return switch

    def env(self) -> dict[str, str]:
        """The environment for its processes: HOME and USER of that user."""
        entry = pwd.getpwuid(self.uid)
        return {**os.environ, "HOME": entry.pw_dir, "USER": self.name, "LOGNAME": self.name}

    def own(self, *paths: Path) -> None:
        """Hand ``paths`` (recursively) to this user; a no-op when we are that user."""
        if self.is_current:
            return
        for path in paths:
            os.chown(path, self.uid, self.gid)
            if path.is_dir():
                for root, dirs, files in os.walk(path):
                    for name in dirs + files:
                        os.chown(os.path.join(root, name), self.uid, self.gid,
                                 follow_symlinks=False)


def check_reachable(user: ServiceUser, path: Path) -> None:
    """Fail clearly when ``user`` cannot reach ``path`` (a parent directory it may not enter),
    instead of letting the database process die with "permission denied"."""
    if user.is_current:
        return
    for parent in path.absolute().parents:
        try:
            st = parent.stat()
        except FileNotFoundError:
            continue  # made later, by us, reachable (or checked again once it exists)
        if st.st_uid == user.uid:
            continue
        allowed = st.st_mode & (0o010 if st.st_gid == user.gid else 0o001)
        if not allowed:
            raise ConfigurationError(
                f"{path} is inside {parent}, which the OS user {user.name!r} (who runs the "
                f"database processes) may not enter; choose a directory outside it, or "
                f"chmod o+x {parent}")


def service_user() -> ServiceUser:
    """The user database processes run as: ourselves, or when root ``SAGAZ_OS_USER``/postgres."""
    if os.getuid() != 0:
        entry = pwd.getpwuid(os.getuid())
        return ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
    name = os.environ.get("SAGAZ_OS_USER", "postgres")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ConfigurationError(
            f"running as root, sagaz starts PostgreSQL and PgBouncer as the OS user {name!r}, "
            "which does not exist: install the postgresql package (it creates 'postgres'), "
            "create the user, or set SAGAZ_OS_USER to an existing unprivileged user") from None
    if entry.pw_uid == 0:
        raise ConfigurationError(f"SAGAZ_OS_USER={name!r} is root; name an unprivileged user")
    return ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def terminate(pid: int, alive: Callable[[int], bool], timeout: float, poll: float) -> None:
    """SIGTERM ``pid`` and wait until ``alive(pid)`` is false, with SIGKILL after every
    ``timeout`` seconds it is still there (a process stuck in its shutdown must not hang ours)."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
        time.sleep(poll)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie. A server killed with SIGKILL stays a
    zombie until its parent (init, for a daemon) reaps it, which may take a second; signal 0
    still reaches a zombie, so ``kill(pid, 0)`` alone would call it running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): trust the signal
    # The state follows the command name, which is in parentheses and may contain spaces.
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")
