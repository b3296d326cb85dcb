"""The files `sagaz dev up --monitoring` writes, without starting anything: prometheus.yml that
promtool accepts with its rule file beside it, the archive alert exactly when backups are on,
one postgres_exporter target per node, and every password file private (0600)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml
from promtool_helpers import run_promtool

from sagaz.ha.local import GENERATED_USERS, ClusterState, LocalCluster
from sagaz.ha.monitoring import PORT_OFFSET, LocalMonitoring


def _cluster(directory: Path, backup: bool) -> LocalCluster:
    state = ClusterState(base_port=41000, dbname="sagaz", nodes=["node0", "node1", "node2"],
                         primary="node0", bindir="/nonexistent", backup=backup)
    return LocalCluster(directory, state, {user: f"secret-of-{user}" for user in GENERATED_USERS})


@pytest.mark.parametrize("backup", [False, True])
def test_files_of_the_local_monitoring(tmp_path: Path, backup: bool) -> None:
    monitoring = LocalMonitoring(_cluster(tmp_path / "cluster", backup))
    monitoring.write_files()
    directory = tmp_path / "cluster" / "monitoring"
    result = run_promtool("check", "config", directory / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr

    config = yaml.safe_load((directory / "prometheus.yml").read_text())
    targets = {job["job_name"]: [(t["targets"][0], t.get("labels", {}))
                                 for t in job["static_configs"]]
               for job in config["scrape_configs"]}
    port = 41000 + PORT_OFFSET
    assert targets == {
        "prometheus": [(f"127.0.0.1:{port}", {})],
        "sagaz": [(f"127.0.0.1:{port + 1}", {})],
        "postgres": [(f"127.0.0.{i + 1}:{port + 2}", {"node": f"node{i}"}) for i in range(3)],
        "pgbouncer": [(f"127.0.0.1:{port + 3}", {"pool": "rw"}),
                      (f"127.0.0.1:{port + 4}", {"pool": "ro"})]}
    rules = (directory / "alert-rules.yml").read_text()
    assert ("SagazWalArchiveNotFlowing" in rules) is backup

    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert (directory / "postgres-exporter.password").read_text() == "secret-of-sagaz_monitor"
    assert (directory / "pgbouncer-ro.pgpass").read_text() == (
        "127.0.0.1:42001:pgbouncer:pgbouncer_stats:secret-of-pgbouncer_stats\n")
    assert (directory / "sagaz-metrics.pgpass").read_text() == (
        "127.0.0.1:42000:sagaz:sagaz:secret-of-sagaz\n")
