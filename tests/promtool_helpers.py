"""Running the real ``promtool`` (Debian: apt-get install prometheus) from the monitoring tests.
Without it they fail under CI=true and are skipped elsewhere."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    message = "promtool is not installed (apt-get install prometheus)"
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


def run_promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def check_rules(path: Path) -> str:
    """``promtool check rules PATH``; its output, after asserting it passed."""
    result = run_promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
