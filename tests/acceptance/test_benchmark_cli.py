"""`sagaz benchmark` as a subprocess: tiny runs that prove the wiring, not the numbers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


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


def test_benchmark_backup_validates_its_arguments_in_one_line() -> None:
    """Bad sizes and rates stop before any cluster is made: exit 2, one line saying what to give
    (a real run takes minutes: tests/benchmarks/test_backup_benchmark.py)."""
    for args, expected in ((["--size-mb", "15"], "--size-mb 15 is too small: give at least 16"),
                           (["--runs", "0"], "--runs 0: give 1 to 50"),
                           (["--rate", "0"], "--rate 0: give the offered sagas/s"),
                           (["--seconds", "0.5"], "--seconds 0.5: give 1 to 3600"),
                           (["--base-port", "80"], "--base-port 80: give 1024 to 64000")):
        result = subprocess.run([sys.executable, "-m", "sagaz", "benchmark", "backup", *args],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {expected}"), result.stderr
        assert result.stdout == ""


def test_benchmark_backup_without_the_server_binaries_exits_2_in_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sagaz", "benchmark", "backup", "--size-mb", "16"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "SAGAZ_PG_BINDIR": "/nonexistent/bin"})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds no initdb and postgres" in lines[0], result.stderr
    assert "benchmark backup:" not in result.stdout  # nothing was started


def test_benchmark_report_validates_its_arguments_in_one_line(tmp_path: Path) -> None:
    """Bad arguments stop before anything is measured or started: exit 2, one line (the run
    itself, about two minutes: tests/benchmarks/test_report_benchmark.py)."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for args, expected in ((["--profile", "huge"], "huge"),
                           (["--broker", "kafka"], "unknown broker(s) ['kafka']"),
                           (["--out", str(a_file)], "is a file; give a directory")):
        result = subprocess.run([sys.executable, "-m", "sagaz", "benchmark", "report", *args],
                                capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert expected in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "sagaz-report").exists()
