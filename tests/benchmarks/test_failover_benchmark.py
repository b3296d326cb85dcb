"""Failover under faults, measured (not part of the default suite: `make bench`, or this file
alone). The scenarios of tests/ha/test_failover_faults.py (postmaster SIGKILL, node crash,
partition of the leader for 30 s, switchover, etcd SIGSTOPped for 15 s) on a 3-node cluster in
network namespaces, ROUNDS rounds each (default 3, SAGAZ_BENCH_FAILOVER_ROUNDS; a subset with
SAGAZ_BENCH_FAILOVER_SCENARIOS="partition 30 s,switchover"), with --sync
and without; prints per scenario and mode the median and the spread (min-max) of:

- write gap: the longest time without an acknowledged saga, per load (pgbouncer-rw and the
  libpq multi-host DSN; one saga every 10 ms each, three steps per saga);
- leader after: from the fault until Patroni named another leader ("-" when it kept its own);
- RTO: from the fault until the pool's load acknowledged sagas again;
- acknowledged (both loads), and the totals over every round of lost, duplicated (steps run
  twice, outbox events or history rows stored twice) and client errors.

Every run is also printed as one "json {...}" line.

The cluster runs nine processes besides the loads: pinned to one core (as `make bench` pins the
other benchmarks) it would measure the scheduler, so this benchmark runs on every core again.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ha"))

from fault_scenarios import FAULTS, ScenarioResult, run_scenario
from nscluster import namespaced_cluster

ROUNDS = int(os.environ.get("SAGAZ_BENCH_FAILOVER_ROUNDS", "3"))
SCENARIOS = [name for name in FAULTS
             if name in os.environ.get("SAGAZ_BENCH_FAILOVER_SCENARIOS", ",".join(FAULTS))]
"""SAGAZ_BENCH_FAILOVER_SCENARIOS: a comma-separated subset of the scenarios (default all)."""


def _spread(values: list[float], unit: str = " s") -> str:
    if not values:
        return "-"
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:.1f}{unit}"
    return f"{median:.1f}{unit} ({min(values):.1f}-{max(values):.1f})"


def _column(runs: list[ScenarioResult], value: Callable[[ScenarioResult], float | None],
            unit: str = " s") -> str:
    values = [v for v in (value(r) for r in runs) if v is not None]
    if not values:
        return "-"
    text = _spread(values, unit)
    return text if len(values) == len(runs) else f"{text} in {len(values)}/{len(runs)}"


def format_table(mode: str, results: dict[str, list[ScenarioResult]]) -> str:
    lines = [
        f"failover, {mode} mode: median (min-max) of {ROUNDS} rounds",
        "| scenario | mode | write gap, pgbouncer-rw | write gap, multi-host DSN | "
        "leader after | RTO | acknowledged | lost | duplicated | client errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        loads = [r.results for r in runs]
        total = sum(len(x.lost) for res in loads for x in res.values())
        dup = sum(len(x.duplicated) + len(x.duplicated_events)
                  for res in loads for x in res.values())
        errors = sum(x.client_errors for res in loads for x in res.values())
        acknowledged = [float(sum(x.acknowledged for x in res.values())) for res in loads]
        lines.append(
            f"| {name} | {mode} | {_column(runs, lambda r: r.results['pool'].gap)} | "
            f"{_column(runs, lambda r: r.results['multi-host'].gap)} | "
            f"{_column(runs, lambda r: r.leader_changed_after)} | "
            f"{_column(runs, lambda r: r.results['pool'].rto)} | "
            f"{statistics.median(acknowledged):.0f} | {total} | {dup} | {errors} |")
    return "\n".join(lines)


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_failover_under_faults(mode: str) -> None:
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    results: dict[str, list[ScenarioResult]] = {name: [] for name in SCENARIOS}
    with namespaced_cluster(sync=mode == "sync") as cluster:
        for _ in range(ROUNDS):
            for name in SCENARIOS:
                result = run_scenario(cluster, name)
                print("\n" + "\n".join(result.lines()), flush=True)
                print("json " + json.dumps({
                    "mode": mode, "scenario": name, "leader_after": result.leader_changed_after,
                    "healthy_after": result.rejoined_after, "rewound": result.rewound,
                    "loads": {k: v.as_dict() for k, v in result.results.items()}}))
                results[name].append(result)
    print("\n" + format_table(mode, results))
    for runs in results.values():
        for run in runs:
            for checked in run.results.values():
                assert not checked.duplicated and not checked.unfinished, checked.line()
                if mode == "sync":
                    assert not checked.lost, checked.line()
