"""The generated alert rules, checked by the real promtool: ``promtool check rules`` accepts them,
and ``promtool test rules`` runs unit tests in which every alert fires on synthetic series that
go bad, and resolves once they are good again."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from promtool_helpers import check_rules, run_promtool

from sagaz.monitoring.rules import ALERTS, AlertSettings, alert_rules


@dataclass(frozen=True)
class Case:
    alert: str
    series: dict[str, str]
    """Series selector -> promtool's expanding notation, one sample per minute."""
    fires_at: str
    resolved_at: str
    labels: dict[str, str]
    summary: str
    """What the alert's summary says (its templates expanded)."""


CASES = [
    Case("SagazReplicationLagHigh",
         {'sagaz_postgres_replication_lag_seconds{replica="node1",instance="w:1"}':
          "0x2 60x10 1x10"},
         "8m", "20m", {"replica": "node1", "severity": "warning"},
         "Replica node1 replays 1m 0s behind the primary"),
    Case("SagazPoolSaturated",
         {'sagaz_pgbouncer_waiting_connections{pool="rw",instance="w:1"}': "0x2 5x20 0x20"},
         "10m", "35m", {"pool": "rw", "severity": "warning"},
         "5 clients wait for a server connection in pool rw"),
    Case("SagazDeadLetterEvents",
         {'sagaz_outbox_dead_letter_events{job="sagaz",instance="w:1"}': "0x2 3x20 0x20"},
         "15m", "35m", {"job": "sagaz", "severity": "critical"},
         "3 outbox events are dead-lettered"),
    Case("SagazFuturePartitionsMissing",
         {'sagaz_partition_future_count{table="saga_states",instance="w:1"}': "3x2 0x30 3x20"},
         "25m", "45m", {"table": "saga_states", "severity": "warning"},
         "Table saga_states has 0 partitions ahead"),
    Case("SagazDefaultPartitionRows",
         {'sagaz_partition_default_rows{table="saga_states",instance="w:1"}': "0x2 12x80 0x20"},
         "75m", "95m", {"table": "saga_states", "severity": "warning"},
         "12 rows accumulate in the DEFAULT partition of saga_states"),
    # Counters: 10 completed a minute throughout; 5 failed a minute from minute 21 to 60.
    Case("SagazSagaFailureRate",
         {'sagaz_saga_total{saga="order",status="COMPLETED",instance="w:1"}': "0+10x100",
          'sagaz_saga_total{saga="order",status="FAILED",instance="w:1"}':
          "0x20 5+5x39 200x40"},
         "45m", "90m", {"saga": "order", "severity": "warning"},
         "33.33% of saga order fail or are compensated"),
    Case("SagazWorkerDown",
         {'up{job="sagaz",instance="127.0.0.1:9464"}': "1x2 0x10 1x10"},
         "8m", "20m", {"job": "sagaz", "instance": "127.0.0.1:9464", "severity": "critical"},
         "The sagaz worker 127.0.0.1:9464 does not answer its metrics scrape"),
    # Failures from minute 3 to 22 with nothing archived; from minute 23 archiving works again.
    Case("SagazWalArchiveNotFlowing",
         {'pg_stat_archiver_failed_count{instance="node0"}': "0x2 1+1x20 21x30",
          'pg_stat_archiver_archived_count{instance="node0"}': "5x22 6+1x30"},
         "15m", "45m", {"instance": "node0", "severity": "critical"},
         "WAL archiving fails on node0"),
]


def _descriptions() -> dict[str, str]:
    """Each alert's description: plain text, no templates."""
    rules = yaml.safe_load(alert_rules())["groups"][0]["rules"]
    return {r["alert"]: r["annotations"]["description"] for r in rules}


def _test_group(case: Case) -> dict[str, Any]:
    annotations = {"summary": case.summary, "description": _descriptions()[case.alert]}
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
        "alert_rule_test": [
            {"eval_time": case.fires_at, "alertname": case.alert,
             "exp_alerts": [{"exp_labels": case.labels, "exp_annotations": annotations}]},
            {"eval_time": case.resolved_at, "alertname": case.alert, "exp_alerts": []},
        ],
    }


def _worker_absent_group() -> dict[str, Any]:
    """No sagaz target at all (a worker scaled to zero) is a worker down too."""
    return {
        "interval": "1m",
        "input_series": [{"series": 'up{job="sagaz",instance="w:1"}', "values": "_x5 1x20"},
                         {"series": 'up{job="prometheus",instance="p:1"}', "values": "1x25"}],
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": "SagazWorkerDown",
             "exp_alerts": [{"exp_labels": {"job": "sagaz", "severity": "critical"},
                             "exp_annotations": {
                                 "summary": "The sagaz worker does not answer its metrics scrape",
                                 "description": _descriptions()["SagazWorkerDown"]}}]},
            {"eval_time": "15m", "alertname": "SagazWorkerDown", "exp_alerts": []},
        ],
    }


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "alert-rules.yml"
    path.write_text(alert_rules())
    return path


def test_promtool_accepts_the_rules(rules_file: Path) -> None:
    output = check_rules(rules_file)
    assert f"{len(ALERTS)} rules found" in output
    names = [r["alert"] for g in yaml.safe_load(rules_file.read_text())["groups"]
             for r in g["rules"]]
    assert names == list(ALERTS)


def test_every_alert_fires_and_resolves(rules_file: Path, tmp_path: Path) -> None:
    assert sorted(c.alert for c in CASES) == sorted(ALERTS)  # a new alert needs its case
    tests = {"rule_files": [rules_file.name], "evaluation_interval": "1m",
             "tests": [*map(_test_group, CASES), _worker_absent_group()]}
    (tmp_path / "alert-tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = run_promtool("test", "rules", "alert-tests.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_a_case_that_does_not_fire_fails_the_unit_test(rules_file: Path,
                                                       tmp_path: Path) -> None:
    """The unit tests can fail: a lag below the threshold fires nothing, so expecting the alert
    makes promtool report a failure."""
    calm = Case("SagazReplicationLagHigh",
                {'sagaz_postgres_replication_lag_seconds{replica="node1"}': "5x20"},
                "8m", "20m", {"replica": "node1", "severity": "warning"}, "")
    tests = {"rule_files": [rules_file.name], "evaluation_interval": "1m",
             "tests": [_test_group(calm)]}
    (tmp_path / "alert-tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = run_promtool("test", "rules", "alert-tests.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "SagazReplicationLagHigh" in result.stdout + result.stderr


def test_without_backups_there_is_no_archive_alert(tmp_path: Path) -> None:
    path = tmp_path / "rules.yml"
    path.write_text(alert_rules(AlertSettings(archive=False, sagaz_job="sagaz/sagaz-worker")))
    check_rules(path)
    rules = yaml.safe_load(path.read_text())["groups"][0]["rules"]
    assert [r["alert"] for r in rules] == [a for a in ALERTS if a != "SagazWalArchiveNotFlowing"]
    worker = next(r for r in rules if r["alert"] == "SagazWorkerDown")
    assert 'up{job="sagaz/sagaz-worker"}' in worker["expr"]
