"""The report's dashboards machinery against the machine's real Prometheus: a temporary
Prometheus (free loopback port, generated configuration) scrapes a target, ``query_range``
evaluates panel queries over the window, and each dashboard becomes a PNG whose empty panels
the report names with their queries. Prometheus is stopped and its directory removed."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from sagaz.benchmarks.dashboards import (
    TemporaryPrometheus,
    collect_dashboards,
    query_range,
    render_dashboards,
)
from sagaz.monitoring.dashboards import Dashboard, Panel, Query


@pytest.mark.timeout(90)
def test_panels_are_evaluated_by_a_real_prometheus_and_drawn(tmp_path: Path) -> None:
    assert shutil.which("prometheus"), "Debian prometheus is needed (apt-get install prometheus)"
    with TemporaryPrometheus([], interval=0.5) as prometheus:
        prometheus.wait_for_scrapes("prometheus")
        start = time.time()
        time.sleep(3)
        end = time.time()
        [up] = query_range(prometheus.url, 'up{job="prometheus"}', start, end, 0.5)
        assert up.labels["job"] == "prometheus" and len(up.points) >= 4
        assert {v for _, v in up.points} == {1.0}
        dashboard = Dashboard("self", "Prometheus itself", (
            Panel("Targets up", (Query('up', "{{job}}"),)),
            Panel("Scrape samples", (Query("scrape_samples_scraped", "{{instance}}"),)),
            Panel("Never there", (Query("sagaz_not_a_metric_total"),))))
        data = collect_dashboards(prometheus.url, [dashboard], start, end)
        directory = prometheus._directory
    lines = render_dashboards(data, tmp_path)  # after Prometheus stopped: the data was kept
    assert directory is not None and not directory.exists()
    assert (tmp_path / "dashboard-self.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![Prometheus itself](dashboard-self.png)" in lines
    assert "No data in this run: Never there (`sagaz_not_a_metric_total`)." in lines


def test_a_query_prometheus_refuses_says_which() -> None:
    with TemporaryPrometheus([]) as prometheus, pytest.raises(RuntimeError, match="sum by"):
        query_range(prometheus.url, "sum by (", time.time() - 5, time.time(), 1)
