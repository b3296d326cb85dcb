"""The monitoring of the generated deployments: docker-compose scrapes sagaz-worker, one
postgres_exporter per server and one pgbouncer_exporter per pool, loads the alert rules and
provisions the dashboards (checked by `docker-compose config` and `promtool`); Kubernetes gets a
PodMonitor, a PrometheusRule (validated against schemas of the Prometheus Operator's documented
fields, its rules by promtool) and a dashboards ConfigMap."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from init_helpers import (
    _no_sagaz_env,
    docker_compose_config,
    documents,
    generate,
    load_env,
)
from k8s_validation import validate_manifests
from promtool_helpers import check_rules, run_promtool

from sagaz.monitoring.dashboards import DASHBOARDS, grafana_json
from sagaz.monitoring.rules import ALERTS, AlertSettings, alert_rules

__all__ = ["_no_sagaz_env"]  # the autouse fixture, for this module too


@pytest.fixture
def compose(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Path:
    return generate(capsys, tmp_path / "deploy", "--with-ha", "--replicas", "2",
                    "--image", "registry.example/shop:2.1")


def test_compose_scrapes_every_part_and_provisions_rules_and_dashboards(compose: Path) -> None:
    result = docker_compose_config(compose)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load((compose / "docker-compose.yaml").read_text())["services"]

    worker = services["sagaz-worker"]
    assert worker["image"] == "registry.example/shop:2.1"
    assert worker["command"] == ["sagaz", "worker", "--metrics-port", "9464", "--metrics-host",
                                 "0.0.0.0"]
    assert "/healthz" in " ".join(worker["healthcheck"]["test"])
    assert worker["depends_on"]["postgres-init"] == {
        "condition": "service_completed_successfully"}
    assert "sslmode=verify-full" in worker["environment"]["SAGAZ_STORAGE_URL"]

    # prometheus.yml: valid for promtool (with its rule file beside it); every target a service.
    monitoring = compose / "monitoring"
    result = run_promtool("check", "config", monitoring / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((monitoring / "prometheus.yml").read_text())
    targets = {job["job_name"]: [(t["targets"][0], t.get("labels", {}))
                                 for t in job["static_configs"]]
               for job in config["scrape_configs"]}
    assert targets["sagaz"] == [("sagaz-worker:9464", {}), ("sagaz-metrics:9465", {})]
    # sagaz metrics serve: the HA figures of every server and pool; URLs (passwords) in its
    # environment, not on its command line; with the values of .env, as the containers get them.
    resolved = docker_compose_config(compose, quiet=False)
    ha = yaml.safe_load(resolved.stdout)["services"]["sagaz-metrics"]
    assert ha["image"] == "registry.example/shop:2.1"
    assert not any("@" in part for part in ha["command"])
    nodes = ha["environment"]["SAGAZ_METRICS_NODES"].split()
    assert [n.split("=", 1)[0] for n in nodes] == ["postgres-primary", "postgres-replica",
                                                   "postgres-replica-2"]
    assert all("sslmode=verify-full" in n for n in nodes)
    assert [p.split("=", 1)[0] for p in ha["environment"]["SAGAZ_METRICS_PGBOUNCERS"].split()
            ] == ["rw", "ro"]
    servers = ["postgres-primary", "postgres-replica", "postgres-replica-2"]
    assert [labels["node"] for _, labels in targets["postgres"]] == servers
    assert [labels["pool"] for _, labels in targets["pgbouncer"]] == ["rw", "ro"]
    for job in ("postgres", "pgbouncer"):
        for address, labels in targets[job]:
            exporter = services[address.split(":")[0]]
            assert exporter["build"] == "./monitoring/exporters"
            upstream = labels.get("node") or f"pgbouncer-{labels['pool']}"
            assert exporter["depends_on"][upstream]["condition"] == "service_healthy"
    primary_exporter = services["postgres-exporter"]["environment"]
    assert primary_exporter["DATA_SOURCE_USER"] == "sagaz_monitor"
    assert "sslmode=verify-full" in primary_exporter["DATA_SOURCE_URI"]
    assert services["pgbouncer-exporter-ro"]["environment"]["PGSSLMODE"] == "verify-full"
    env = load_env(compose / ".env")
    assert len(env["SAGAZ_MONITOR_PASSWORD"]) >= 32
    assert "SAGAZ_MONITOR_PASSWORD" in services["postgres-primary"]["environment"]

    # The alert rules, mounted beside prometheus.yml.
    assert (monitoring / "alert-rules.yml").read_text() == alert_rules(AlertSettings())
    check_rules(monitoring / "alert-rules.yml")
    assert "./monitoring/alert-rules.yml:/etc/prometheus/alert-rules.yml:ro" in services[
        "prometheus"]["volumes"]

    # Grafana: the provider points where the dashboards are mounted.
    provider = yaml.safe_load((monitoring / "grafana-dashboards.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert f"./monitoring/dashboards:{path}:ro" in services["grafana"]["volumes"]
    for dashboard in DASHBOARDS:
        text = (monitoring / "dashboards" / dashboard.file_name).read_text()
        assert text == grafana_json(dashboard)
        assert json.loads(text)["title"] == dashboard.title

    # The exporters' image: Debian's packages, and the launcher the local cluster runs too.
    dockerfile = (monitoring / "exporters" / "Dockerfile").read_text()
    assert "prometheus-postgres-exporter" in dockerfile
    assert "prometheus-pgbouncer-exporter" in dockerfile
    script = resources.files("sagaz.monitoring").joinpath("pgbouncer_exporter.py")
    assert (monitoring / "exporters" / "pgbouncer_exporter.py").read_text() == \
        script.read_text()


def _by_kind(path: Path) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in documents(path)}


@pytest.mark.parametrize("namespace", ["sagaz", "prod-saga"])
def test_kubernetes_gets_a_pod_monitor_a_prometheus_rule_and_dashboards(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, namespace: str,
) -> None:
    k8s = generate(capsys, tmp_path, "--k8s", "--with-ha", "--namespace", namespace) / "k8s"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # The PodMonitor and PrometheusRule by schemas of the Prometheus Operator's documented
    # fields, the ConfigMap by kubernetes-validate --strict (k8s_validation.py).
    found = validate_manifests([k8s / "prometheus-rules.yaml", k8s / "grafana-dashboards.yaml"],
                               scratch)
    assert [d["kind"] for kind in ("podmonitor", "prometheusrule", "kubernetes")
            for d in found[kind]] == ["PodMonitor", "PrometheusRule", "ConfigMap"]
    monitoring = _by_kind(k8s / "prometheus-rules.yaml")
    rule = monitoring["PrometheusRule"]
    assert rule["metadata"]["namespace"] == namespace
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    check_rules(rules_file)
    names = [r["alert"] for r in rule["spec"]["groups"][0]["rules"]]
    assert names == [a for a in ALERTS if a != "SagazWalArchiveNotFlowing"]
    worker_down = next(r for r in rule["spec"]["groups"][0]["rules"]
                       if r["alert"] == "SagazWorkerDown")
    # A PodMonitor's job is <namespace>/<its name>.
    assert f'up{{job="{namespace}/sagaz-worker"}}' in worker_down["expr"]

    # The PodMonitor finds the worker's pods and their named metrics port.
    pod_monitor = monitoring["PodMonitor"]
    worker = _by_kind(k8s / "sagaz-worker.yaml")["Deployment"]
    pod = worker["spec"]["template"]
    for key, value in pod_monitor["spec"]["selector"]["matchLabels"].items():
        assert pod["metadata"]["labels"][key] == value
    container = pod["spec"]["containers"][0]
    assert [p["name"] for p in container["ports"]] == [
        e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]]
    assert container["command"] == ["sagaz", "worker", "--metrics-port", "9464",
                                    "--metrics-host", "0.0.0.0"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}

    dashboards = _by_kind(k8s / "grafana-dashboards.yaml")["ConfigMap"]
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboards["data"] == {d.file_name: grafana_json(d) for d in DASHBOARDS}
