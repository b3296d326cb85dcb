"""`sagaz benchmark report --profile quick` end to end (not part of the default suite: about two
minutes; `make bench`): the report directory holds report.md with every section and checklist
line, and the charts are real PNG files; the temporary cluster is gone afterwards."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SECTIONS = ("## Checklist of the design summary", "## Physical limits (same run)",
            "## Saga throughput and latency", "## Outbox relay per broker", "## Partitioning",
            "## Replication and the read pool (temporary local cluster)", "## Charts")
CHECKLIST = ("1K saga/s write throughput (via pgbouncer-rw)", "5K events/s outbox throughput",
             "< 50 ms p99 write latency", "< 200 ms p95 analytics query latency",
             "PgBouncer reduces connection overhead 30%+", "Replication lag < 2 seconds")


def _report_clusters() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("sagaz-bench-report-*")}


@pytest.mark.timeout(400)
def test_the_quick_report_writes_every_section_and_chart(tmp_path: Path) -> None:
    before = _report_clusters()
    result = subprocess.run(
        [sys.executable, "-m", "sagaz", "benchmark", "report", "--profile", "quick",
         "--out", str(tmp_path / "report")], capture_output=True, text=True, timeout=390)
    assert result.returncode == 0, result.stdout + result.stderr
    print("\n" + result.stdout)
    report = (tmp_path / "report" / "report.md").read_text()
    for heading in SECTIONS:
        assert heading in report
    for claim in CHECKLIST:
        assert claim in report and claim in result.stdout
    assert "**Saga shape:** 3 no-op steps" in report
    for chart in ("sagas.png", "outbox.png", "partitioning.png", "replication_lag.png"):
        assert f"]({chart})" in report
        assert (tmp_path / "report" / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _report_clusters() == before  # the temporary cluster was removed
