"""How `sagaz benchmark report` judges and writes what it measured: the design summary's
checklist lines against their thresholds, report.md's sections, real PNG charts. The numbers
here are given (the subject is the judging and the writing); the measuring itself runs in
tests/benchmarks/test_report_benchmark.py."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sagaz.benchmarks.limits import ReplayResult
from sagaz.benchmarks.outbox import BrokerResult, OutboxBenchmark
from sagaz.benchmarks.partitioning import PartitioningBenchmark, QueryResult, RetentionStep
from sagaz.benchmarks.postgres import PathResult, PostgresBenchmark
from sagaz.benchmarks.replication import ReplicationLag
from sagaz.benchmarks.report import PROFILES, ReportRun
from sagaz.benchmarks.report_md import targets, write_report

WHEN = datetime(2030, 1, 2, 3, 4, tzinfo=UTC)


def _path(label: str, rate: float, p99: float) -> PathResult:
    return PathResult(label, [rate], [p99 / 3], [p99], [rate / 2])


def _step(name: str, ms: float) -> RetentionStep:
    return RetentionStep(name, 10_000, ms, 1000, None, 2_000_000, 1_000_000)


def _run(*, rw_rate: float, rw_p99: float, connect_pgbouncer_ms: float,
         pruned: bool = True) -> ReportRun:
    query = QueryResult("count of the month", "SELECT count(*) FROM {table}", [1.0], [3.0],
                        10, 30, 0.1, 0.1, ["p1"] if pruned else ["p1", "p2"], "", "")
    return ReportRun(
        profile=PROFILES["quick"], server="127.0.0.1:5432 as postgres",
        embedded=_path("embedded SQLite", 700, 40),
        postgres=PostgresBenchmark("s", 2000, 64, 300, 2,
                                   [_path("direct", 1000, 30), _path("PgBouncer", 900, 35)],
                                   4.0, 1100, 5900),
        cluster_rw=_path("pgbouncer-rw", rw_rate, rw_p99),
        outbox=OutboxBenchmark("s", 2000, 2000, [BrokerResult("redis", [6000], [20], [60]),
                                                  BrokerResult("rabbitmq", [900], [500],
                                                               [900])], [1500]),
        partitioning=PartitioningBenchmark(
            130_000, 13, "s", {}, 1.0, "2029-05", "p1", 10_000, 1, 1, [query], "2028-11",
            _step("drop", 5), _step("delete", 50), _step("vacuum", 90), None, 10),
        lag=ReplicationLag(300, 290, 3, [5.0, 9.0, 40.0], [1.0], 200),
        analytics_ms=sorted([5.0] * 19 + [250.0]), connect_direct_ms=40.0,
        connect_pgbouncer_ms=connect_pgbouncer_ms, commit_rate=2500,
        replay=ReplayResult(960, 600, 245, 1200), stage_seconds={"all": 100.0})


def test_each_checklist_line_passes_or_fails_on_its_threshold() -> None:
    good = {t.claim: t.passed for t in targets(
        _run(rw_rate=1200, rw_p99=45, connect_pgbouncer_ms=20))}
    assert good == {
        "1K saga/s write throughput (via pgbouncer-rw)": True,
        "5K events/s outbox throughput (redis)": True,
        "5K events/s outbox throughput (rabbitmq)": False,
        "< 50 ms p99 write latency": True,
        "< 200 ms p95 analytics query latency": False,  # 1 of 20 at 250 ms: p95 is 250
        "PgBouncer reduces connection overhead 30%+ (a connection per transaction)": True,
        "PgBouncer on persistent connections costs under 30% of direct throughput": True,
        "Replication lag < 2 seconds (local)": True,
        "Partitions used for queries (EXPLAIN shows pruning)": True,
        "Old partitions dropped successfully": True,
    }
    bad = {t.claim: t.passed for t in targets(
        _run(rw_rate=999, rw_p99=50, connect_pgbouncer_ms=29, pruned=False))}
    assert not bad["1K saga/s write throughput (via pgbouncer-rw)"]
    assert not bad["< 50 ms p99 write latency"]
    assert not bad["PgBouncer reduces connection overhead 30%+ (a connection per transaction)"]
    assert not bad["Partitions used for queries (EXPLAIN shows pruning)"]


def test_the_report_has_its_sections_the_shape_and_real_charts(tmp_path: Path) -> None:
    path = write_report(_run(rw_rate=1200, rw_p99=45, connect_pgbouncer_ms=20), tmp_path, WHEN)
    text = path.read_text()
    assert "measured 2030-01-02 03:04 UTC" in text
    assert "**Saga shape:** 3 no-op steps" in text
    assert "- **PASS** 1K saga/s write throughput (via pgbouncer-rw): 1,200 sagas/s" in text
    assert "- **FAIL** 5K events/s outbox throughput (rabbitmq): 900 events/s" in text
    # Ratios to the physical limits: 1,200 sagas/s x 4 writes / 2,500 commits/s; / replay.
    assert "| pgbouncer-rw | 1,200 | 1,200 | 1.92x | 1.00x |" in text
    assert "## Dashboards" not in text
    for chart in ("sagas.png", "outbox.png", "partitioning.png", "replication_lag.png"):
        assert f"![{chart}]({chart})" in text
        assert (tmp_path / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dashboards_collected_during_the_run_become_a_section_with_their_pngs(
    tmp_path: Path,
) -> None:
    from sagaz.benchmarks.dashboards import DashboardData, PanelData

    run = _run(rw_rate=1200, rw_p99=45, connect_pgbouncer_ms=20)
    run.dashboards = [DashboardData("sagaz-sagas", "Sagas", [
        PanelData("Sagas by status", "ops", ["sum by (status) (rate(sagaz_saga_total[5m]))"],
                  [("COMPLETED", [(0.0, 1.0), (1.0, 3.0), (2.0, 2.5)])]),
        PanelData("Dead-lettered events", "short", ["sagaz_outbox_dead_letter_events"], [])],
        20.0, 1.0)]
    text = write_report(run, tmp_path, WHEN).read_text()
    assert "## Dashboards" in text and "![Sagas](dashboard-sagaz-sagas.png)" in text
    assert "No data in this run: Dead-lettered events (`sagaz_outbox_dead_letter_events`)." \
        in text
    assert (tmp_path / "dashboard-sagaz-sagas.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
