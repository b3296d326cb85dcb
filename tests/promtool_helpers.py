"""Running the real ``promtool`` (Debian: apt-get install prometheus) from the monitoring tests.
Without it they fail."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from missing_service import fail_missing


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    fail_missing("promtool is not installed (apt-get install prometheus)")


def run_promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def check_rules(path: Path) -> str:
    """``promtool check rules PATH``; its output, after asserting it passed."""
    result = run_promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
