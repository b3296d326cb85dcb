"""A long-running process of the local cluster (an etcd member, a Patroni): started detached as
the service user, optionally behind a command prefix (``ip netns exec NAME``: a node in a network
namespace of its own), its pid in a 0600 file, its output in a 0600 log; stopped by that pid.

With a prefix the switch to the service user happens after it (``setpriv``), because entering a
namespace needs the privileges the service user does not have; without one, in the child before
exec (as :mod:`sagaz.ha.postgres` and :mod:`sagaz.ha.pgbouncer` do). Either way the pid we record
is the daemon's own: ``ip netns exec`` and ``setpriv`` exec, they do not fork.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from sagaz.ha.osuser import ServiceUser, process_alive, service_user
from sagaz.private_files import open_private_append, write_private_file

__all__ = ["Daemon"]

logger = logging.getLogger(__name__)


@dataclass
class Daemon:
    name: str
    command: list[str]
    pid_path: Path
    log_path: Path
    prefix: list[str] = field(default_factory=list)
    """Runs in front of the command as the current user (root for ``ip netns exec``)."""
    env: dict[str, str] = field(default_factory=dict)
    """Added to the service user's environment."""
    user: ServiceUser = field(default_factory=service_user)
    cwd: Path | None = None

    def argv(self) -> list[str]:
        if self.prefix and not self.user.is_current:
            return [*self.prefix, "setpriv", f"--reuid={self.user.uid}",
                    f"--regid={self.user.gid}", "--init-groups", "--", *self.command]
        return [*self.prefix, *self.command]

    def start(self) -> int:
        """Start it unless it runs; its pid."""
        running = self.pid
        if running is not None:
            return running
        preexec = None if self.prefix else self.user.preexec()
        with os.fdopen(open_private_append(self.log_path), "ab") as log:
            process = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env={**self.user.env(), **self.env}, preexec_fn=preexec,
                start_new_session=True, cwd=self.cwd)
        write_private_file(self.pid_path, f"{process.pid}\n")
        _children.append(process)
        logger.info("started %s (pid %d)", self.name, process.pid,
                    extra={"action": "daemon_started", "daemon": self.name, "pid": process.pid})
        return process.pid

    @property
    def pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        _reap(pid)
        return pid if process_alive(pid) else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def signal(self, how: int) -> bool:
        """Send ``how``; False when it was not running."""
        pid = self.pid
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, how)
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; waits until it is gone."""
        pid = self.pid
        if pid is None:
            self.pid_path.unlink(missing_ok=True)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self._alive(pid):
            if time.monotonic() > deadline:
                logger.warning("%s (pid %d) did not stop within %g s: SIGKILL", self.name, pid,
                               timeout, extra={"action": "daemon_killed", "daemon": self.name})
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + timeout
            time.sleep(0.05)
        self.pid_path.unlink(missing_ok=True)

    @staticmethod
    def _alive(pid: int) -> bool:
        _reap(pid)
        return process_alive(pid)


# Popen objects of daemons this process started: kept so that they are reaped (a zombie would
# count as running) and Python does not warn about children still running.
_children: list[subprocess.Popen[bytes]] = []


def _reap(pid: int) -> None:
    for child in _children:
        if child.pid == pid:
            child.poll()
    _children[:] = [c for c in _children if c.returncode is None]
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
