"""The metric names the dashboard checks read out of PromQL expressions."""

from __future__ import annotations

import pytest

from sagaz.monitoring.dashboards import DASHBOARDS, dashboard_named, grafana_json
from sagaz.monitoring.promql import metric_names


@pytest.mark.parametrize(("expr", "names"), [
    ("up", {"up"}),
    ('sum by (pool) (rate(pgbouncer_requests_total{database!="pgbouncer"}[5m]))',
     {"pgbouncer_requests_total"}),
    ("histogram_quantile(0.99, sum by (le, saga) (rate(sagaz_saga_duration_seconds_bucket[5m])))",
     {"sagaz_saga_duration_seconds_bucket"}),
    ("sum(x_total) without (instance) / on (job) group_left (node) y_info",
     {"x_total", "y_info"}),
    ('a > 0 unless on (instance) increase(b[15m] offset 1h) > 0 or absent(c{job="sagaz"})',
     {"a", "b", "c"}),
    ('min by (table) (sagaz_partition_future_count) >= bool 1', {"sagaz_partition_future_count"}),
    ('{__name__="from_matcher", job="by"}', {"from_matcher"}),
    ('count_values("by", some_metric) + 1e3 * 2h', {"some_metric"}),
])
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_dashboards_have_the_issue_titles_and_valid_json() -> None:
    import json

    assert [d.title for d in DASHBOARDS] == ["PostgreSQL HA Overview", "PgBouncer Pools",
                                             "Partition Health", "Sagas"]
    for dashboard in DASHBOARDS:
        model = json.loads(grafana_json(dashboard))
        assert model["uid"] == dashboard.uid and model["title"] == dashboard.title
        exprs = [t["expr"] for p in model["panels"] for t in p["targets"]]
        assert exprs == dashboard.expressions() and all(exprs)
        assert len({p["id"] for p in model["panels"]}) == len(model["panels"])
        assert all(metric_names(e) for e in exprs)
    assert dashboard_named("Sagas") is DASHBOARDS[3]
    with pytest.raises(KeyError, match="no dashboard"):
        dashboard_named("nope")
