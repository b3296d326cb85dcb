"""The CLI when PostgreSQL is unreachable or rejects the login: exit 3, one line on stderr that
says which and what to change, no traceback, no password (real subprocesses, real servers)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from psycopg.conninfo import conninfo_to_dict

if TYPE_CHECKING:
    from sagaz.ha.local import LocalCluster

HERE = Path(__file__).resolve().parent  # holds sample_sagas.py
PASSWORD = "s3cret-pw-0815"
ONE_SHOT = [["sagas", "list"], ["run", "sample_sagas:hello"], ["worker", "--once"]]
# The worker loop outlives an outage (it retries on its next pass), not a rejected login.
WORKER_LOOP = ["worker", "--interval", "1"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sagaz(
    cwd: Path, args: list[str], **env: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SAGAZ_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), clean.get("PYTHONPATH")]))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "sagaz", *args], cwd=cwd,
                            env={**clean, **env}, capture_output=True, text=True, timeout=60,
                            check=False)
    return result, time.monotonic() - started


def _assert_one_line_storage_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    assert "Traceback" not in output and "PoolTimeout" not in output, output
    assert PASSWORD not in output, output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # no pool warnings, no retry chatter
    assert lines[0].startswith("error: storage error: PostgreSQL at "), lines
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("args", ONE_SHOT, ids=" ".join)
def test_an_unreachable_database_exits_3_after_retry_timeout(
    tmp_path: Path, args: list[str]
) -> None:
    port = closed_port()
    url = f"postgresql://sagaz:{PASSWORD}@127.0.0.1:{port}/app"
    result, elapsed = _sagaz(tmp_path, args, SAGAZ_STORAGE_URL=url, SAGAZ_RETRY_TIMEOUT="1")
    _assert_one_line_storage_error(result, f"127.0.0.1:{port}/app unreachable",
                                   "Connection refused")
    assert elapsed < 15, elapsed  # SAGAZ_RETRY_TIMEOUT=1 is honoured, not the pool's 30 s


@pytest.fixture(scope="module")
def cluster(local_cluster: LocalCluster) -> LocalCluster:
    return local_cluster


@pytest.mark.parametrize("args", [*ONE_SHOT, WORKER_LOOP], ids=" ".join)
def test_a_wrong_password_exits_3_at_once(
    tmp_path: Path, cluster: LocalCluster, args: list[str]
) -> None:
    params = conninfo_to_dict(cluster.dsn())
    url = f"postgresql://{params['user']}:{PASSWORD}@{params['host']}:{params['port']}/" \
          f"{params['dbname']}"
    result, elapsed = _sagaz(tmp_path, args, SAGAZ_STORAGE_URL=url)
    _assert_one_line_storage_error(result, "rejected the connection",
                                   "password authentication failed", "check the user, password")
    assert elapsed < 15, elapsed  # the default retry_timeout is 30 s: none of it is spent
