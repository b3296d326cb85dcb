"""The HA metrics of ``sagaz metrics serve --cluster DIR``, scraped over HTTP from the live
endpoint of a real local cluster (a primary, a streaming replica, pgbouncer-rw and -ro): the
replication lag per replica, the pools' clients, the partitions, which node is up in which
role. Then a pool hangs (SIGSTOP) and the replica stops: the scrape still answers within its
deadline, and says which components it could not read."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cluster_fixtures import temporary_cluster
from devcluster import require_cluster_binaries
from metrics_scrape import scrape

from sagaz.ha.local import READER_USER, LocalCluster
from sagaz.storage.postgresql.maintenance import partition_statistics

TIMEOUT = 1.5
"""--scrape-timeout: a hung component costs at most this."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    require_cluster_binaries()
    with temporary_cluster(replicas=1) as made:
        yield made


def _serve(
    directory: Path, tmp: Path
) -> tuple[subprocess.Popen[str], str, queue.Queue[str], threading.Thread]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAZ_")}
    env.update(PYTHONUNBUFFERED="1", COLUMNS="200",
               SAGAZ_STORAGE_URL=f"sqlite:///{tmp / 'metrics.db'}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sagaz", "metrics", "serve", "--cluster", str(directory),
         "--port", "0", "--scrape-timeout", str(TIMEOUT)],
        cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        first = lines.get(timeout=30)
    except queue.Empty:
        proc.kill()
        raise AssertionError(proc.communicate()) from None
    assert first.startswith("metrics on http://127.0.0.1:"), first
    return proc, first.split()[2].removesuffix("/metrics"), lines, reader


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ha_metrics_live_then_with_a_hung_pool_and_a_stopped_replica(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    primary, replica = cluster.state.primary, cluster.state.replicas[0]
    proc, url, lines, reader = _serve(cluster.directory, tmp_path)
    bouncer = cluster.bouncer("ro", [replica])
    stopped_pid: int | None = None
    try:
        # A client in a transaction through the write pool: linked to a server connection.
        with psycopg.connect(cluster.dsn(port=cluster.state.rw_port),
                             prepare_threshold=None) as client:
            client.execute("SELECT 1")
            live = scrape(url)
        for component in ("replication", "partitions", "pgbouncer_rw", "pgbouncer_ro",
                          f"postgres_{primary}", f"postgres_{replica}", "outbox"):
            assert live.value("sagaz_scrape_error", component=component) == 0, component
        assert live.value("sagaz_postgres_up", node=primary, role="primary") == 1
        assert live.value("sagaz_postgres_up", node=replica, role="replica") == 1
        assert live.value("sagaz_postgres_replication_lag_seconds", replica=replica) >= 0
        assert live.value("sagaz_postgres_replication_lag_bytes", replica=replica) >= 0
        assert live.value("sagaz_pgbouncer_active_connections", pool="rw") >= 1
        assert live.value("sagaz_pgbouncer_waiting_connections", pool="rw") == 0
        assert live.value("sagaz_pgbouncer_active_connections", pool="ro") >= 0
        assert live.value("sagaz_pgbouncer_waiting_connections", pool="ro") == 0
        stats = partition_statistics(cluster.dsn(user=READER_USER))
        counts = Counter(p.table_name for p in stats)
        assert set(counts) >= {"saga_executions", "saga_outbox"}
        now = time.time()
        for table, count in counts.items():
            assert live.value("sagaz_partition_count", table=table) == count
            assert live.value("sagaz_partition_size_bytes", table=table) > 0
            assert live.value("sagaz_partition_default_rows", table=table) == 0
            future = sum(1 for p in stats if p.table_name == table and not p.is_default
                         and p.range_start is not None and p.range_start.timestamp() > now)
            assert live.value("sagaz_partition_future_count", table=table) == future

        # The read pool hangs (it accepts, never answers); the replica is shut down.
        stopped_pid = bouncer.pid
        assert stopped_pid is not None
        os.kill(stopped_pid, signal.SIGSTOP)
        cluster.node(replica).stop()
        for _ in range(2):  # the second scrape finds the hung component still busy
            broken = scrape(url)
            assert broken.seconds < TIMEOUT + 2.0, broken.seconds
            assert broken.value("sagaz_scrape_error", component="pgbouncer_ro") == 1
            assert broken.value("sagaz_scrape_error", component=f"postgres_{replica}") == 1
            assert broken.value("sagaz_postgres_up", node=replica, role="replica") == 0
            assert broken.value("sagaz_scrape_error", component="pgbouncer_rw") == 0
            assert broken.value("sagaz_postgres_up", node=primary, role="primary") == 1
            assert broken.get("sagaz_pgbouncer_active_connections", pool="ro") is None
    finally:
        if stopped_pid is not None:
            os.kill(stopped_pid, signal.SIGCONT)
        if not cluster.node(replica).running:
            cluster.node(replica).start()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)  # not communicate(): the reader thread owns stdout
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert proc.returncode == 0, err
    reader.join(10)
    assert "metrics stopped\n" in list(lines.queue)
    assert "Traceback" not in err
