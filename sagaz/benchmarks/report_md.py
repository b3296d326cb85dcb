"""Writing a :class:`~sagaz.benchmarks.report.ReportRun`: ``report.md`` (tables, the design
summary's checklist as pass/fail lines) and PNG charts (matplotlib, extra ``sagaz[report]``)."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sagaz.benchmarks.engine import percentile
from sagaz.benchmarks.postgres import PathResult
from sagaz.benchmarks.report import SAGA_SHAPE, ReportRun

__all__ = ["Target", "targets", "write_report"]

WRITES_PER_SAGA = 4


@dataclass(frozen=True)
class Target:
    """One line of the design summary's performance checklist, measured."""

    claim: str
    measured: str
    passed: bool
    how: str

    def line(self) -> str:
        return (f"- **{'PASS' if self.passed else 'FAIL'}** {self.claim}: {self.measured} "
                f"({self.how})")


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _paths(run: ReportRun) -> list[PathResult]:
    return [run.embedded, *run.postgres.paths, run.cluster_rw]


def _label(path: PathResult) -> str:
    # The write-path benchmark names its paths "direct", "PgBouncer ...": say to what.
    if path.label == "direct" or path.label.startswith("PgBouncer"):
        return f"PostgreSQL {path.label}"
    return path.label


def targets(run: ReportRun) -> list[Target]:
    """The checklist of the design summary (Performance Testing, and the functional lines this
    run measures), each with the value measured here."""
    rw = run.cluster_rw
    rw_rate = _median(rw.rates)
    out = [Target("1K saga/s write throughput (via pgbouncer-rw)", f"{rw_rate:,.0f} sagas/s",
                  rw_rate >= 1000, f"closed loop, {run.profile.concurrency} coroutines, "
                  "pgbouncer-rw of the temporary cluster over TLS")]
    for broker in run.outbox.brokers:
        rate = _median(broker.relay_rates)
        out.append(Target(f"5K events/s outbox throughput ({broker.name})",
                          f"{rate:,.0f} events/s", rate >= 5000,
                          "committed rows -> broker ack -> marked SENT, one relay worker"))
    p99 = _median(rw.p99_ms)
    out.append(Target("< 50 ms p99 write latency", f"p99 {p99:.1f} ms", p99 < 50,
                      f"run() of a whole saga ({WRITES_PER_SAGA} durable writes) through "
                      f"pgbouncer-rw at {run.profile.rate:,.0f} sagas/s offered"))
    p95 = percentile(run.analytics_ms, 0.95)
    out.append(Target("< 200 ms p95 analytics query latency", f"p95 {p95:.1f} ms", p95 < 200,
                      f"{len(run.analytics_ms)} queries (saga list, status counts) on the "
                      "replica through pgbouncer-ro, after the load"))
    reduction = 1 - run.connect_pgbouncer_ms / run.connect_direct_ms
    out.append(Target(
        "PgBouncer reduces connection overhead 30%+ (a connection per transaction)",
        f"{reduction:+.1%} ({run.connect_direct_ms:.1f} ms direct, "
        f"{run.connect_pgbouncer_ms:.1f} ms through pgbouncer-rw)", reduction >= 0.30,
        "connect with TLS, SELECT 1, commit, disconnect; median"))
    direct, bouncer = run.postgres.paths[0], run.postgres.paths[-1]
    cost = 1 - bouncer.rate / direct.rate
    out.append(Target(
        "PgBouncer on persistent connections costs under 30% of direct throughput",
        f"{cost:+.1%} (PgBouncer {bouncer.rate:,.0f}, direct {direct.rate:,.0f} sagas/s)",
        cost < 0.30,
        "pooled clients pay the extra hop and gain no connection setup; same server, no TLS"))
    lag = run.lag.p99
    out.append(Target("Replication lag < 2 seconds (local)", f"p99 {lag:.1f} ms", lag < 2000,
                      f"commit -> replayed on the replica under {run.profile.rate:,.0f} "
                      "sagas/s"))
    queries = run.partitioning.queries
    pruned = all(len(q.partitions_scanned) == 1 for q in queries)
    out.append(Target("Partitions used for queries (EXPLAIN shows pruning)",
                      f"{sum(len(q.partitions_scanned) == 1 for q in queries)} of "
                      f"{len(queries)} one-month queries scan one partition", pruned,
                      "EXPLAIN ANALYZE of the executed plans"))
    drop, delete = run.partitioning.drop, run.partitioning.delete
    freed = drop.size_before - drop.size_after
    out.append(Target("Old partitions dropped successfully",
                      f"{drop.rows:,} rows and {freed / 1e6:,.1f} MB gone with the partition in "
                      f"{drop.elapsed_ms:,.1f} ms (DELETE of the same rows: "
                      f"{delete.elapsed_ms:,.1f} ms, and frees nothing until VACUUM FULL)",
                      drop.rows == delete.rows and freed > 0,
                      "retention of the oldest month by DROP, as maintenance does it"))
    return out


def _ratio(value: float, limit: float) -> str:
    return f"{value / limit:.2f}x" if limit else "n/a"


def _machine(run: ReportRun) -> str:
    return (f"{platform.node()} ({platform.system()} {platform.release()}, {os.cpu_count()} "
            f"CPUs, Python {platform.python_version()}); PostgreSQL server {run.server}")


def _markdown(run: ReportRun, when: datetime, charts: list[str],
              dashboards: list[str] | None) -> str:
    p = run.profile
    limit_writes = run.commit_rate
    lines = [
        "# sagaz benchmark report", "",
        f"Profile **{p.name}**, measured {when:%Y-%m-%d %H:%M} UTC on {_machine(run)}; the "
        f"measuring stages took {run.seconds:,.0f} s (see the end).", "",
        f"**Saga shape:** {SAGA_SHAPE}.", "",
        f"Each figure is the median of {p.runs} run(s); the runs are listed where there are "
        f"several. Load average when the run started: {run.load_average:.1f} on "
        f"{os.cpu_count()} CPUs (other work competes for them); quote ratios, which travel "
        "better than absolute numbers.", "",
        "## Checklist of the design summary", "",
        *[t.line() for t in targets(run)], "",
        "## Physical limits (same run)", "",
        f"- Single-row durable commits: **{run.commit_rate:,.0f}/s** over "
        f"{p.commit_concurrency} connections (one-row INSERT, autocommit).",
        f"- Replay of the storage's SQL: the {run.replay.statements:,} statements that "
        f"{run.replay.sagas:,} sagas sent (recorded on the storage's connections) take "
        f"{run.replay.sagas / run.replay.replay_rate:.2f} s sent raw: "
        f"**{run.replay.replay_rate:,.0f} sagas/s** of database work, against "
        f"{run.replay.saga_rate:,.0f} sagas/s through the engine "
        f"({_ratio(run.replay.saga_rate, run.replay.replay_rate)} of the replay: the rest is "
        "the engine and the driver).", "",
        "## Saga throughput and latency", "",
        f"Throughput: closed loop, {p.sagas:,} sagas over {p.concurrency} coroutines "
        f"(SQLite: {p.sqlite_sagas:,}). Latency: run() at {p.rate:,.0f} sagas/s offered for "
        f"{p.latency_seconds:g} s (open loop, counted from each saga's due time; SQLite at "
        "half its throughput if lower). Writes/s = sagas/s x 4, as a ratio to the single-row "
        "commit rate (above 1: group commit at work).", "",
        "| path | sagas/s | runs | writes/s vs commit rate | vs SQL replay | p50 ms | "
        "p99 ms | achieved/s |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for path in _paths(run):
        rate = _median(path.rates)
        db = "n/a" if path is run.embedded else _ratio(rate * WRITES_PER_SAGA, limit_writes)
        replay = "n/a" if path is run.embedded else _ratio(rate, run.replay.replay_rate)
        lines.append(
            f"| {_label(path)} | {rate:,.0f} | {', '.join(f'{r:,.0f}' for r in path.rates)} | "
            f"{db} | {replay} | {_median(path.p50_ms):.1f} | {_median(path.p99_ms):.1f} | "
            f"{_median(path.achieved_rates):,.0f} |")
    lines += [
        "", f"Per saga on PostgreSQL: {run.postgres.rows_per_saga:.1f} state rows, "
        f"{run.postgres.bytes_per_saga:,.0f} table+index bytes, "
        f"{run.postgres.wal_bytes_per_saga:,.0f} WAL bytes.", "",
        "## Outbox relay per broker", "",
        f"{run.outbox.events:,} committed events relayed (batches of 500); commit-to-publish "
        f"latency at {run.outbox.offered_rate:,.0f} events/s offered, relay woken by "
        "LISTEN/NOTIFY, from the producer's COMMIT to the broker's acknowledgement.", "",
        "| broker | relay events/s | vs commit rate | commit->ack p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for b in run.outbox.brokers:
        rate = _median(b.relay_rates)
        lines.append(f"| {b.name} | {rate:,.0f} | {_ratio(rate, limit_writes)} | "
                     f"{_median(b.p50_ms):.1f} | {_median(b.p99_ms):.1f} |")
    lines += ["", f"Consumer inbox (dedup + handler write + commit): "
              f"{_median(run.outbox.inbox_rates):,.0f} events/s "
              f"({_ratio(_median(run.outbox.inbox_rates), limit_writes)} of the commit rate).",
              ""]
    part = run.partitioning
    lines += [
        "## Partitioning", "",
        f"{part.rows:,} saga_executions rows over {part.months} monthly partitions against an "
        f"unpartitioned copy; queries of {part.query_month} ({part.query_month_rows:,} rows).",
        "", "| query | partitioned ms | unpartitioned ms | speedup | partitions scanned |",
        "|---|---:|---:|---:|---:|",
        *[f"| {q.name} | {q.partitioned_median_ms:.2f} | {q.unpartitioned_median_ms:.2f} | "
          f"{q.speedup:.1f}x | {len(q.partitions_scanned)} |" for q in part.queries],
        "", f"Retention of {part.retention_month}: DROP {part.drop.elapsed_ms:,.1f} ms, "
        f"DELETE {part.delete.elapsed_ms:,.1f} ms "
        f"({part.delete.elapsed_ms / max(part.drop.elapsed_ms, 0.001):,.0f}x), then the "
        f"VACUUM the DELETE needs: {part.vacuum.elapsed_ms:,.1f} ms.", "",
        "## Replication and the read pool (temporary local cluster)", "",
        f"A primary, one streaming replica and two PgBouncers on loopback, TLS everywhere. "
        f"Under {run.lag.offered_rate:,.0f} sagas/s offered for {run.lag.seconds:g} s "
        f"(achieved {run.lag.achieved_rate:,.0f}/s), commit -> replayed on the replica: "
        f"p50 {run.lag.p50:.2f} ms, p99 {run.lag.p99:.2f} ms ({len(run.lag.lag_ms)} samples).",
        f"Analytics queries on the replica through pgbouncer-ro: p50 "
        f"{percentile(run.analytics_ms, 0.5):.1f} ms, p95 "
        f"{percentile(run.analytics_ms, 0.95):.1f} ms.",
        f"A connection per transaction: {run.connect_direct_ms:.1f} ms direct to the primary, "
        f"{run.connect_pgbouncer_ms:.1f} ms through pgbouncer-rw (median).", "",
    ]
    if dashboards is not None:
        lines += ["## Dashboards", "", *dashboards, ""]
    lines += ["## Charts", "", *[f"![{name}]({name})" for name in charts], "",
              "## Time per stage", "",
              *[f"- {name}: {secs:,.1f} s" for name, secs in run.stage_seconds.items()], ""]
    return "\n".join(lines)


def pyplot() -> Any:
    """matplotlib.pyplot drawing into files only; a clear error without the extra."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("the report's charts need matplotlib: pip install 'sagaz[report]'"
                          ) from exc
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _bars(ax: Any, labels: list[str], values: list[float], title: str, unit: str,
          target: float | None = None) -> None:
    ax.barh(labels, values, color="#4c72b0")
    for i, value in enumerate(values):
        ax.text(value, i, f" {value:,.0f}", va="center", fontsize=8)
    if target is not None:
        ax.axvline(target, color="#c44e52", linestyle="--", label=f"target {target:,.0f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(unit)


def _charts(run: ReportRun, out: Path) -> list[str]:
    plt = pyplot()
    written = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(name)

    paths = _paths(run)
    labels = [_label(p) for p in paths]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4))
    _bars(left, labels, [_median(p.rates) for p in paths], "Saga throughput", "sagas/s", 1000)
    left.axvline(run.replay.replay_rate, color="#55a868", linestyle=":",
                 label=f"SQL replay {run.replay.replay_rate:,.0f}")
    left.legend(loc="lower right", fontsize=8)
    width = 0.4
    ys = list(range(len(paths)))
    right.barh([y - width / 2 for y in ys], [_median(p.p50_ms) for p in paths], width,
               label="p50")
    right.barh([y + width / 2 for y in ys], [_median(p.p99_ms) for p in paths], width,
               label="p99")
    right.set_yticks(ys, labels)
    right.axvline(50, color="#c44e52", linestyle="--", label="p99 target 50 ms")
    right.set_title(f"run() latency at {run.profile.rate:,.0f} sagas/s offered", fontsize=10)
    right.set_xlabel("ms")
    right.legend(fontsize=8)
    save(fig, "sagas.png")

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.5))
    brokers = [b.name for b in run.outbox.brokers]
    _bars(left, brokers, [_median(b.relay_rates) for b in run.outbox.brokers],
          "Outbox relay", "events/s", 5000)
    ys = list(range(len(brokers)))
    right.barh([y - width / 2 for y in ys], [_median(b.p50_ms) for b in run.outbox.brokers],
               width, label="p50")
    right.barh([y + width / 2 for y in ys], [_median(b.p99_ms) for b in run.outbox.brokers],
               width, label="p99")
    right.set_yticks(ys, brokers)
    right.set_title("Commit to broker ack", fontsize=10)
    right.set_xlabel("ms")
    right.legend(fontsize=8)
    save(fig, "outbox.png")

    part = run.partitioning
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.5))
    names = [q.name for q in part.queries]
    ys = list(range(len(names)))
    left.barh([y - width / 2 for y in ys], [q.partitioned_median_ms for q in part.queries],
              width, label="partitioned")
    left.barh([y + width / 2 for y in ys], [q.unpartitioned_median_ms for q in part.queries],
              width, label="unpartitioned")
    left.set_yticks(ys, names)
    left.set_title("One-month queries", fontsize=10)
    left.set_xlabel("ms")
    left.legend(fontsize=8)
    _bars(right, ["DROP partition", "DELETE rows", "VACUUM after DELETE"],
          [part.drop.elapsed_ms, part.delete.elapsed_ms, part.vacuum.elapsed_ms],
          "Retention of one month", "ms")
    save(fig, "partitioning.png")

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(range(len(run.lag.lag_ms)), run.lag.lag_ms, linewidth=0.8)
    ax.set_title(f"Replication lag under {run.lag.offered_rate:,.0f} sagas/s "
                 "(commit -> replayed on the replica)", fontsize=10)
    ax.set_xlabel("sample")
    ax.set_ylabel("ms")
    save(fig, "replication_lag.png")
    return written


def write_report(run: ReportRun, out: Path, when: datetime) -> Path:
    """Write ``report.md`` and its charts into ``out``; returns the report's path. ``when``
    (UTC) is printed in the report: injected, so the text does not depend on the clock."""
    from sagaz.benchmarks.dashboards import render_dashboards

    out.mkdir(parents=True, exist_ok=True)
    charts = _charts(run, out)
    dashboards = None
    if run.dashboards is not None:
        dashboards = [
            "The deployments' Grafana dashboards, each panel's PromQL evaluated by a Prometheus "
            "that scraped sagaz's metrics endpoint, postgres_exporter per server and "
            "pgbouncer_exporter per pool every 2 s during the cluster stage "
            f"({run.dashboards[0].seconds:,.0f} s, step {run.dashboards[0].step:g} s): "
            "rate() windows longer than the stage show its start ramping up.", "",
            *render_dashboards(run.dashboards, out)] if run.dashboards else []
    path = out / "report.md"
    path.write_text(_markdown(run, when, charts, dashboards))
    return path
