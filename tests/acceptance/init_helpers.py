"""What the `sagaz init` tests share: running the command in-process, reading what it wrote,
and the tools and directories the tests need."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from missing_service import fail_missing

from sagaz.cli import main

__all__ = ["WEAK", "_no_sagaz_env", "docker_compose_config", "documents", "free_port",
           "generate", "init", "load_env", "require_tool", "service_dir"]

# A weak or well-known password: user:password@ in URLs, or a *PASSWORD* key set to one.
WEAK = re.compile(
    r"(?im)(postgres:postgres@|://[^/\s:@]+:(password|postgres|changeme|secret|admin|sagaz)@"
    r"|password[\"']?\s*[:=]\s*[\"']?(password|postgres|changeme|change_me|secret|admin|sagaz)"
    r"[\"']?\s*$)")


def require_tool(path: str | None, what: str) -> str:
    if path and os.path.exists(path):
        return path
    fail_missing(f"{what} is not installed")


def docker_compose_config(directory: Path, *, quiet: bool = True
                          ) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` in ``directory``: whether docker-compose accepts the files (and
    finds every variable they need) and, not ``quiet``, the resolved file on stdout. Fails under
    CI=true, skips elsewhere, without docker-compose."""
    tool = require_tool(shutil.which("docker-compose"),
                        "docker-compose (apt-get install docker-compose)")
    return subprocess.run([tool, "config", *(["-q"] if quiet else [])], cwd=directory,
                          capture_output=True, text=True, timeout=60)


def init(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["init", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def generate(capsys: pytest.CaptureFixture[str], directory: Path, *args: str) -> Path:
    code, out, err = init(capsys, "--dir", str(directory), *args)
    assert code == 0, (out, err)
    return directory


def load_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if line and not line.startswith("#"))
    return {k: v for k, v in pairs}


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(autouse=True)
def _no_sagaz_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SAGAZ_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "400")



@pytest.fixture
def service_dir() -> Iterator[Path]:
    """A directory the unprivileged service user (postgres, when the tests run as root) can use."""
    directory = Path(tempfile.mkdtemp(prefix="sagaz-test-init-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)

