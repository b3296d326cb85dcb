"""TLS on every hop of the local cluster (real PostgreSQL 15 servers and PgBouncers): a plaintext
TCP connection is refused by every server and both pools, a client that verifies against another
CA is refused, the cluster's own URLs (verify-full) work, and sagas, the outbox relay and
replication all run over TLS."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sagaz.ha.local import LocalCluster
from sagaz.tls import ensure_certificates

pytestmark = pytest.mark.slow


def _connect(conninfo: str) -> psycopg.Connection[Any]:
    return psycopg.connect(conninfo, autocommit=True, prepare_threshold=None, connect_timeout=5)


def _targets(cluster: LocalCluster, **extra: Any) -> dict[str, str]:
    """A conninfo to each server and each pool, with ``extra`` over the defaults."""
    found = {node: cluster.node_dsn(node, **extra) for node in cluster.state.nodes}
    found["pgbouncer-rw"] = cluster.dsn(port=cluster.state.rw_port, **extra)
    found["pgbouncer-ro"] = cluster.dsn(user="sagaz_reader", port=cluster.state.ro_port, **extra)
    return found


def test_plaintext_tcp_is_refused_by_every_server_and_both_pools(
    local_cluster: LocalCluster,
) -> None:
    targets = _targets(local_cluster, sslmode="disable")
    assert len(targets) == len(local_cluster.state.nodes) + 2
    for name, conninfo in targets.items():
        with pytest.raises(psycopg.OperationalError) as refused:
            _connect(conninfo).close()
        message = str(refused.value)
        # PostgreSQL: no hostssl rule matches a connection without TLS; PgBouncer: SSL required.
        assert "no encryption" in message or "SSL required" in message, (name, message)


def test_no_hba_rule_accepts_tcp_without_tls(local_cluster: LocalCluster) -> None:
    for node in local_cluster.state.nodes:
        with _connect(local_cluster.node_dsn(node)) as conn:
            rules = conn.execute(
                "SELECT type, auth_method FROM pg_hba_file_rules WHERE error IS NULL").fetchall()
        assert rules, node
        for kind, method in rules:
            assert kind in ("local", "hostssl") or (kind == "hostnossl" and method == "reject"), \
                (node, rules)


def test_verify_full_with_another_ca_is_refused(local_cluster: LocalCluster,
                                                tmp_path: Path) -> None:
    other = ensure_certificates(tmp_path / "other", ["127.0.0.1"])
    for name, conninfo in _targets(local_cluster, sslrootcert=str(other.ca_cert)).items():
        with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
            _connect(conninfo).close()
        assert name


def test_verify_full_with_the_cluster_ca_works_for_the_dev_env_urls(
    local_cluster: LocalCluster,
) -> None:
    env = local_cluster.env()
    ca = str(local_cluster.tls.ca_cert)
    for key in ("SAGAZ_STORAGE_URL", "SAGAZ_ANALYTICS_URL", "SAGAZ_DATABASE_URL"):
        url = env[key]
        assert url.endswith(f"?sslmode=verify-full&sslrootcert={ca}"), url
        with _connect(url) as conn:
            assert conn.pgconn.ssl_in_use, key
            # Through a pool this is PgBouncer's own connection to the server: TLS as well.
            row = conn.execute(
                "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
            assert row is not None and row[0] is True, (key, row)
            assert row[1] in ("TLSv1.2", "TLSv1.3")


def test_every_server_and_pool_is_reached_over_verified_tls(
    local_cluster: LocalCluster,
) -> None:
    for name, conninfo in _targets(local_cluster).items():
        assert "sslmode=verify-full" in conninfo
        with _connect(conninfo) as conn:
            assert conn.pgconn.ssl_in_use, name


def test_replicas_stream_over_tls(local_cluster: LocalCluster) -> None:
    cluster = local_cluster
    with _connect(cluster.node_dsn(cluster.state.primary)) as primary:
        rows = primary.execute(
            "SELECT r.application_name, r.state, s.ssl FROM pg_stat_replication r "
            "JOIN pg_stat_ssl s USING (pid) ORDER BY 1").fetchall()
    assert rows == [(name, "streaming", True) for name in sorted(cluster.state.replicas)]
    for replica in cluster.state.replicas:
        with _connect(cluster.node_dsn(replica)) as standby:
            row = standby.execute("SELECT status, conninfo FROM pg_stat_wal_receiver").fetchone()
        assert row is not None and row[0] == "streaming"
        assert "sslmode=verify-full" in row[1] and "sslrootcert=" in row[1]


def test_key_files_are_private(local_cluster: LocalCluster) -> None:
    tls = local_cluster.tls
    assert stat.S_IMODE(tls.directory.stat().st_mode) == 0o700
    for key in (tls.ca_key, tls.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


SAGA_MODULE = '''
from sagaz import Saga

async def reserve(ctx):
    ctx.emit("OrderReserved", {"order": ctx["order"]}, key=ctx["order"])

async def charge(ctx):
    return {"charged": ctx["order"]}

async def ship(ctx):
    return {"shipped": ctx["order"]}

order = Saga(name="tls-order")
order.add_step("reserve", reserve)
order.add_step("charge", charge)
order.add_step("ship", ship)
'''


def _sagaz(cwd: Path, env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "sagaz", *args], cwd=cwd, capture_output=True, text=True,
        timeout=60, env={**{k: v for k, v in os.environ.items()
                            if not k.startswith("SAGAZ_")}, **env, "PYTHONPATH": str(cwd)})
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout


def test_a_saga_and_its_outbox_events_go_through_tls(local_cluster: LocalCluster,
                                                     tmp_path: Path) -> None:
    """`sagaz run` on SAGAZ_STORAGE_URL (pgbouncer-rw, verify-full), then the relay of
    `sagaz worker --once` sends its events: the saga path and the outbox path over TLS."""
    (tmp_path / "shop.py").write_text(SAGA_MODULE)
    env = {**local_cluster.env(), "SAGAZ_BROKER_URL": "memory://"}
    order = f"tls-{uuid.uuid4().hex[:8]}"
    _sagaz(tmp_path, env, "run", "shop:order", "--ctx", f'{{"order": "{order}"}}')
    with _connect(env["SAGAZ_DATABASE_URL"]) as conn:
        saga = conn.execute(
            "SELECT status FROM saga_executions WHERE saga_name = 'tls-order' "
            "AND context->>'order' = %s", (order,)).fetchall()
        assert saga == [("COMPLETED",)], saga
    out = _sagaz(tmp_path, env, "worker", "--once", "--maintenance-interval", "0")
    assert "relayed" in out, out
    with _connect(env["SAGAZ_DATABASE_URL"]) as conn:
        events = conn.execute(
            "SELECT event_type, status FROM saga_outbox WHERE payload->>'order' = %s",
            (order,)).fetchall()
    assert events == [("OrderReserved", "SENT")], events


def test_the_pools_verify_the_servers(local_cluster: LocalCluster) -> None:
    """One server per pool here: the CA and the host name (verify-full). A host list (the read
    pool over several replicas) falls back to the CA alone: PgBouncer before 1.25 checks the list
    as one name (pgbouncer/pgbouncer#1300)."""
    from sagaz.ha.pgbouncer import server_tls_sslmode

    for role in ("rw", "ro"):
        ini = local_cluster.bouncer(role).config_path.read_text()
        assert "client_tls_sslmode = require" in ini
        assert "server_tls_sslmode = verify-full" in ini
        assert f"server_tls_ca_file = {local_cluster.tls.ca_cert}" in ini
    assert server_tls_sslmode(["127.0.0.2,127.0.0.3"]) == "verify-ca"
