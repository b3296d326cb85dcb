"""Crash tests: run a child process until it says it reached the point under test, then SIGKILL
it there, so that what it left in storage and in its effects file is what a crash leaves."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without any SAGAZ_* setting, plus ``extra``, with this
    directory on the child's path (its sagas write through effects_file)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAZ_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), env.get("PYTHONPATH")) if p)
    return {**env, **extra}


def sigkill_child_once_paused(args: list[str], env: dict[str, str], stderr_path: Path, *,
                              paused: Callable[[], bool], waiting_for: str, within: float,
                              poll: float) -> None:
    """Start ``args`` (its stderr to ``stderr_path``, shown if it fails), wait until ``paused()``
    and SIGKILL it; fail the test if it exits first or is not paused ``within`` seconds. The
    child is always reaped, also when the test fails."""
    with stderr_path.open("wb") as stderr:
        child = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + within
        while not paused():
            if child.poll() is not None:
                pytest.fail(f"child exited ({child.returncode}) before {waiting_for}:\n"
                            f"{stderr_path.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"child did not reach {waiting_for} within {within}s:\n"
                            f"{stderr_path.read_text()}")
            time.sleep(poll)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
