"""`sagaz benchmark` as a subprocess: tiny runs that prove the wiring, not the numbers."""

from __future__ import annotations

import subprocess
import sys


def test_benchmark_postgres_runs_small(pg_server: str) -> None:
    """`sagaz benchmark postgres` wiring: a tiny run prints both paths and the footprint."""
    result = subprocess.run(
        [sys.executable, "-m", "sagaz", "benchmark", "postgres", "--dsn", pg_server,
         "--sagas", "60", "--concurrency", "8", "--runs", "1", "--rate", "100",
         "--latency-seconds", "0.3"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "direct" in result.stdout and "PgBouncer (transaction mode)" in result.stdout
    # The same paths over TLS, side by side (TLS to clients only when the server has ssl off;
    # then there is no "direct, TLS" line).
    assert "PgBouncer (transaction mode), TLS" in result.stdout
    assert "4.0 state rows" in result.stdout
    assert "with the audit log: 1.0 rows" in result.stdout  # saga_completed


def test_benchmark_engine_runs_small() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sagaz", "benchmark", "engine", "--sagas", "200", "--runs", "1"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "sagas/s" in result.stdout


def test_benchmark_postgres_unreachable_server_exits_3() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sagaz", "benchmark", "postgres",
         "--dsn", "postgresql://u:s3cret@127.0.0.1:1/postgres"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    assert "cannot reach" in result.stderr and "s3cret" not in result.stderr
