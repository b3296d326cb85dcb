"""Reading a child process's output line by line with a timeout."""

from __future__ import annotations

import queue
import subprocess
import threading


def stdout_lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """The lines ``proc`` prints, as they come: ``get(timeout=...)`` on the queue waits for the
    next one (readline() itself has no timeout, so a daemon thread reads and queues them)."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines
