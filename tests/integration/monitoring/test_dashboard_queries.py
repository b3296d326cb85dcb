"""Every panel query of the dashboards is PromQL that promtool accepts: each is written as a
recording rule and the file checked with ``promtool check rules`` (the live check against real
metric names is tests/ha/test_monitoring_stack.py)."""

from __future__ import annotations

from pathlib import Path

import yaml
from promtool_helpers import check_rules, run_promtool

from sagaz.monitoring.dashboards import DASHBOARDS, panel_queries


def _recording_rules(exprs: dict[str, str]) -> str:
    return yaml.safe_dump({"groups": [{"name": "dashboards", "rules": [
        {"record": name, "expr": expr} for name, expr in exprs.items()]}]})


def test_every_panel_query_passes_promtool(tmp_path: Path) -> None:
    exprs = {f"sagaz:{d.uid.replace('-', '_')}:{i}": expr
             for d in DASHBOARDS for i, expr in enumerate(d.expressions())}
    assert len(exprs) >= 30
    path = tmp_path / "dashboards.yml"
    path.write_text(_recording_rules(exprs))
    assert f"{len(exprs)} rules found" in check_rules(path)
    assert sum(len(q) for panels in panel_queries().values() for q in panels.values()) == len(
        exprs)


def test_promtool_rejects_a_broken_query(tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    path.write_text(_recording_rules({"sagaz:broken": "sum by (pool (rate(x[5m]))"}))
    result = run_promtool("check", "rules", path)
    assert result.returncode != 0 and "parse error" in result.stdout + result.stderr
