"""`sagaz dev up --ha --monitoring`: the machine's Prometheus, one postgres_exporter per server
and one pgbouncer_exporter per pool, started on loopback with the least-privileged monitoring
credentials; Prometheus' HTTP API shows live series from every target, the alert rules are
loaded, the supervisor starts a killed exporter again, and `dev down` stops everything.

Every panel of the dashboards is checked here too: Prometheus parses its query, and each metric
name it reads is in the live output of the endpoint it comes from: the exporters, `sagaz
metrics serve` of the stack, and a worker's own endpoint (sagaz.Metrics) after real sagas."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cluster_fixtures import cluster_addresses
from devcluster import DevCluster, dev_cluster, require_cluster_binaries
from missing_service import fail_missing
from prometheus_client.parser import text_string_to_metric_families

from sagaz.errors import ConfigurationError
from sagaz.ha.addresses import find_free_base_port
from sagaz.ha.local import MONITOR_USER
from sagaz.ha.monitoring import PORT_OFFSET, LocalMonitoring, find_monitoring_binaries
from sagaz.monitoring.dashboards import DASHBOARDS
from sagaz.monitoring.promql import metric_names
from sagaz.monitoring.rules import ALERTS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]



def _free_monitoring_base() -> int:
    """A base port whose cluster ports (and those of a third node, which a test adds) and
    monitoring ports (P+2000..P+2004, the exporters of node1 and node2 on 127.0.0.2, .3) are all
    free."""
    return find_free_base_port(33000, 13, lambda base: cluster_addresses(3, base) + [
        (host, base + offset) for host, offset in
        [("127.0.0.1", PORT_OFFSET + i) for i in range(5)]
        + [("127.0.0.2", PORT_OFFSET + 2), ("127.0.0.3", PORT_OFFSET + 2)]])


@pytest.fixture(scope="module")
def monitored() -> Iterator[DevCluster]:
    require_cluster_binaries()
    try:
        find_monitoring_binaries()
    except ConfigurationError as exc:
        fail_missing(f"the monitoring tests need Prometheus and the exporters: {exc}")
    with dev_cluster(1, "--monitoring", "--check-interval", "0.5",
                     base_port=_free_monitoring_base(),
                     clean_up=_kill_monitoring_leftovers) as cluster:
        yield cluster


def _kill_monitoring_leftovers(directory: Path) -> None:
    """SIGKILL, by the pids recorded in DIR/monitoring, what a failed test left running."""
    for pid_file in (directory / "monitoring").glob("*.pid"):
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _query(monitoring: LocalMonitoring, expr: str) -> list[dict[str, Any]]:
    answer = _get(f"{monitoring.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def _eventually(monitoring: LocalMonitoring, expr: str, timeout: float = 60) -> list[
        dict[str, Any]]:
    """The result of ``expr`` once it is not empty (Prometheus scrapes every 15 s)."""
    deadline = time.monotonic() + timeout
    while True:
        result = _query(monitoring, expr)
        if result or time.monotonic() > deadline:
            return result
        time.sleep(1)


def _use_both_pools(dev: DevCluster) -> None:
    """A session through each pool: PgBouncer lists a database's pool once a client used it."""
    cluster = dev.cluster
    for user, port in (("sagaz", cluster.state.rw_port), ("sagaz_reader", cluster.state.ro_port)):
        with psycopg.connect(cluster.dsn(user=user, port=port), prepare_threshold=None,
                             connect_timeout=5) as conn:
            conn.execute("SELECT 1").fetchone()


def test_prometheus_sees_live_series_from_every_target(monitored: DevCluster) -> None:
    monitoring = LocalMonitoring(monitored.cluster)
    _use_both_pools(monitored)
    for node in ("node0", "node1"):
        up = _eventually(monitoring, f'up{{job="postgres",node="{node}"}} == 1')
        assert len(up) == 1, up
        assert _eventually(monitoring, f'pg_up{{node="{node}"}} == 1')
        assert _eventually(monitoring, f'pg_stat_database_xact_commit{{node="{node}",'
                                       f'datname="sagaz"}}')
    # The replica says it is one; the primary streams to it.
    assert _eventually(monitoring, 'pg_settings_in_hot_standby{node="node1"} == 1')
    assert _eventually(monitoring, 'pg_stat_replication_pg_wal_lsn_diff{node="node0",'
                                   'application_name="node1"}')
    for pool in ("rw", "ro"):
        assert _eventually(monitoring, f'up{{job="pgbouncer",pool="{pool}"}} == 1')
        assert _eventually(monitoring, f'pgbouncer_pool_size{{pool="{pool}",database="sagaz"}}')
        assert _eventually(monitoring, f'pgbouncer_requests_total{{pool="{pool}",'
                                       f'database="sagaz"}} > 0')
    # sagaz's own endpoint (`sagaz metrics serve --cluster`): the HA figures and the outbox.
    assert _eventually(monitoring, 'up{job="sagaz"} == 1')
    assert _eventually(monitoring, 'sagaz_postgres_up{job="sagaz",node="node1",role="replica"}'
                                   ' == 1')
    assert _eventually(monitoring, 'sagaz_pgbouncer_active_connections{job="sagaz",pool="ro"}')
    assert _eventually(monitoring, 'sagaz_scrape_error{job="sagaz",component="outbox"} == 0')
    targets = _get(f"{monitoring.url}/api/v1/targets")["data"]["activeTargets"]
    jobs = sorted((t["labels"]["job"], t["scrapeUrl"]) for t in targets)
    base = monitored.base_port + PORT_OFFSET
    assert [j for j, _ in jobs] == ["pgbouncer", "pgbouncer", "postgres", "postgres",
                                    "prometheus", "sagaz"]
    assert ("sagaz", f"http://127.0.0.1:{base + 1}/metrics") in jobs


def test_alert_rules_are_loaded(monitored: DevCluster) -> None:
    monitoring = LocalMonitoring(monitored.cluster)
    groups = _get(f"{monitoring.url}/api/v1/rules")["data"]["groups"]
    names = [r["name"] for g in groups for r in g["rules"]]
    # No backups in this cluster: no archive alert.
    assert names == [a for a in ALERTS if a != "SagazWalArchiveNotFlowing"]
    assert all(r["health"] in ("ok", "unknown") for g in groups for r in g["rules"])


def test_exporters_use_least_privileged_credentials_from_private_files(
        monitored: DevCluster) -> None:
    cluster = monitored.cluster
    monitoring = LocalMonitoring(cluster)
    directory = cluster.directory / "monitoring"
    for path in [directory, *directory.glob("*.password"), *directory.glob("*.pgpass"),
                 *directory.glob("*.log"), *directory.glob("*.pid"),
                 directory / "prometheus.yml"]:
        assert stat.S_IMODE(path.stat().st_mode) in (0o600, 0o700), path
    secrets = [cluster.passwords[MONITOR_USER], cluster.passwords["pgbouncer_stats"],
               cluster.passwords["sagaz"]]
    for process in monitoring.processes():
        pid = monitoring.pid(process)
        assert pid is not None, process.name
        exposed = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(
            f"/proc/{pid}/environ").read_bytes()
        assert not any(s.encode() in exposed for s in secrets), process.name
    # The monitoring role reads statistics and nothing of sagaz's data.
    with psycopg.connect(cluster.node_dsn("node0", user=MONITOR_USER), connect_timeout=5) as conn:
        assert conn.execute("SELECT count(*) FROM pg_stat_replication").fetchone() == (1,)
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                            ).fetchone() == (False,)
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(cluster.node_dsn("node0", user=MONITOR_USER, dbname="sagaz"),
                        connect_timeout=5)
    with pytest.raises(psycopg.OperationalError, match=r"rejects connection .* no encryption"):
        psycopg.connect(cluster.node_dsn("node0", user=MONITOR_USER, sslmode="disable"),
                        connect_timeout=5)


def _exposed(text: str) -> set[str]:
    """The sample names a /metrics text exposes, also of families that have no sample yet
    (a counter no saga has incremented: its TYPE line declares it)."""
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
             if line and not line.startswith("#")}
    for family in text_string_to_metric_families(text):
        names |= {sample.name for sample in family.samples}
        names |= {f"{family.name}{suffix}" for suffix in _SUFFIXES.get(family.type, ("",))}
    return names


_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


async def _worker_endpoint_names(tmp: Path) -> set[str]:
    """A worker's own endpoint (sagaz.Metrics, as `sagaz worker --metrics-port` serves it)
    after a saga that completes and one that retries a step and compensates."""
    from sagaz import Saga, SagaConfig
    from sagaz.observability.endpoint import serve_metrics
    from sagaz.observability.metrics import Metrics
    from sagaz.storage.sqlite import SQLiteSagaStorage

    storage = SQLiteSagaStorage(str(tmp / "worker.db"))
    config = SagaConfig(storage=storage)
    metrics = Metrics()
    metrics.instrument(config)
    server = serve_metrics(port=0, metrics=metrics, config=config)
    attempts = []

    async def reserve(ctx: Any) -> None:
        ctx.emit("Reserved", {"order": ctx["order"]})

    async def release(ctx: Any) -> None:
        pass

    async def charge(ctx: Any) -> None:
        attempts.append(1)
        if ctx["order"] == 2:
            raise RuntimeError("card declined")

    try:
        for order in (1, 2):
            saga = Saga(name="order", config=config)
            saga.add_step("reserve", reserve, compensation=release)
            saga.add_step("charge", charge, max_retries=1)
            with contextlib.suppress(Exception):
                await saga.run({"order": order})
        url = f"{server.url}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read().decode())
    finally:
        server.stop()
        await storage.close()
    assert 'status="COMPENSATED"' in text and "sagaz_step_retries_total{" in text
    return _exposed(text)


def test_dashboard_queries_parse_and_read_live_metric_names(
        monitored: DevCluster, tmp_path: Path) -> None:
    monitoring = LocalMonitoring(monitored.cluster)
    _use_both_pools(monitored)
    live: set[str] = set()
    for process in monitoring.processes():
        if process.name != "prometheus":
            with urllib.request.urlopen(f"http://{process.address}/metrics",
                                        timeout=10) as response:
                live |= _exposed(response.read().decode())
    live |= asyncio.run(_worker_endpoint_names(tmp_path))
    for dashboard in DASHBOARDS:
        for expr in dashboard.expressions():
            _query(monitoring, expr)  # Prometheus parses and evaluates it
            for name in metric_names(expr):
                assert name in live, (dashboard.title, expr, name)


def test_status_prints_the_url_and_the_supervisor_restarts_a_dead_exporter(
        monitored: DevCluster) -> None:
    monitoring = LocalMonitoring(monitored.cluster)
    status = monitored.cli("dev", "status")
    assert monitoring.url in status.out, status.out
    as_json = json.loads(monitored.cli("dev", "status", "--json").out)
    assert as_json["monitoring"] == {"enabled": True, "prometheus_url": monitoring.url,
                                     "stopped": []}
    exporter = next(p for p in monitoring.processes() if p.name == "pgbouncer-exporter-rw")
    pid = monitoring.pid(exporter)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while (monitoring.pid(exporter) in (None, pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert monitoring.pid(exporter) not in (None, pid)


def test_pgbouncer_exporter_reconnects_after_a_pool_restart(monitored: DevCluster) -> None:
    """Debian's exporter keeps one connection for ever; sagaz's launcher opens a new one after
    PgBouncer restarted: the same process serves the pool's figures again."""
    monitoring = LocalMonitoring(monitored.cluster)
    exporter = next(p for p in monitoring.processes() if p.name == "pgbouncer-exporter-ro")
    pid = monitoring.pid(exporter)
    result = monitored.cli("dev", "restart", "pgbouncer-ro")
    assert result.code == 0, result.err
    deadline = time.monotonic() + 20
    text = ""
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://{exporter.address}/metrics",
                                        timeout=5) as response:
                text = response.read().decode()
            if "pgbouncer_pool_size{" in text:
                break
        time.sleep(0.5)
    assert "pgbouncer_pool_size{" in text
    assert monitoring.pid(exporter) == pid


def test_monitoring_can_be_switched_off_and_on_again(monitored: DevCluster) -> None:
    monitoring = LocalMonitoring(monitored.cluster)
    off = monitored.cli("dev", "up", "--no-monitoring")
    assert off.code == 0, off.err
    assert monitoring.running() == []
    assert json.loads(monitored.cli("dev", "status", "--json").out)["monitoring"] == {
        "enabled": False}
    on = monitored.cli("dev", "up", "--monitoring")
    assert on.code == 0, on.err
    assert monitoring.url in on.out
    assert sorted(monitoring.running()) == sorted(p.name for p in monitoring.processes())


def test_a_replica_added_later_is_scraped_too(monitored: DevCluster) -> None:
    """`dev up --replicas 2` starts the new node's exporter and Prometheus re-reads its
    configuration (SIGHUP) with the new target."""
    monitoring = LocalMonitoring(monitored.cluster)
    prometheus = next(p for p in monitoring.processes() if p.name == "prometheus")
    pid = monitoring.pid(prometheus)
    result = monitored.cli("dev", "up", "--ha", "--replicas", "2")
    assert result.code == 0, result.out + result.err
    assert "postgres-exporter-node2" in result.out
    assert _eventually(monitoring, 'up{job="postgres",node="node2"} == 1')
    assert _eventually(monitoring, 'pg_settings_in_hot_standby{node="node2"} == 1')
    assert monitoring.pid(prometheus) == pid  # reloaded, not restarted


def test_down_stops_every_monitoring_process(monitored: DevCluster) -> None:
    monitoring = LocalMonitoring(monitored.cluster)
    pids = [monitoring.pid(p) for p in monitoring.processes()]
    assert None not in pids
    result = monitored.cli("dev", "down")
    assert result.code == 0, result.err
    assert "prometheus" in result.out
    assert monitoring.running() == []
    for pid in pids:
        assert pid is not None
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(
            f"/proc/{pid}/stat").read_text().split()[2]
