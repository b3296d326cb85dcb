"""`sagaz init` (docker-compose) against the real services: the generated pgbouncer.ini files in a
real PgBouncer, the generated init scripts and schema on a real PostgreSQL (the local cluster).
A test that needs a missing tool fails under CI=true and is skipped elsewhere."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from init_helpers import _no_sagaz_env, free_port, generate, load_env, require_tool, service_dir
from privilege_probes import (
    assert_app_role_is_confined,
    assert_reader_is_least_privileged,
    create_foreign_table,
)

__all__ = ["_no_sagaz_env", "service_dir"]  # fixtures, for these tests


@pytest.mark.parametrize("role", ["rw", "ro"])
def test_generated_pgbouncer_ini_runs_in_a_real_pgbouncer(
    capsys: pytest.CaptureFixture[str], service_dir: Path, role: str,
) -> None:
    from sagaz.ha.osuser import service_user

    require_tool(shutil.which("pgbouncer") or "/usr/sbin/pgbouncer", "pgbouncer")
    psql = require_tool(shutil.which("psql"), "psql")
    generate(capsys, service_dir / "deploy", "--with-ha")
    env = load_env(service_dir / "deploy" / ".env")
    run = service_dir / "run"
    run.mkdir()
    port = free_port()
    ini = (service_dir / "deploy" / "pgbouncer" / f"pgbouncer-{role}.ini").read_text()
    # Adapted only in address, port and the paths of the auth file and certificates (what
    # tls-setup.sh does in the container: a copy of tls/ for PgBouncer's user).
    adapted = (ini.replace("listen_addr = 0.0.0.0", "listen_addr = 127.0.0.1")
               .replace(f"listen_port = {6432 if role == 'rw' else 6433}", f"listen_port = {port}")
               .replace("auth_file = /tmp/pgbouncer/userlist.txt",
                        f"auth_file = {run}/auth/userlist.txt")
               .replace("/tmp/sagaz-tls/", f"{run}/tls/"))
    assert adapted.count(str(run)) == 1 + 4 and f"listen_port = {port}" in adapted
    assert "client_tls_sslmode = require" in adapted
    (run / "pgbouncer.ini").write_text(adapted)
    shutil.copytree(service_dir / "deploy" / "tls", run / "tls")
    user = service_user()
    user.own(run, run / "pgbouncer.ini")
    tls = {"PGSSLMODE": "verify-full",
           "PGSSLROOTCERT": str(service_dir / "deploy" / "tls" / "ca.crt")}
    start_env = {**user.env(), "PATH": f"/usr/sbin:{os.environ['PATH']}",
                 "PGBOUNCER_AUTH_FILE": str(run / "auth" / "userlist.txt"),
                 **{k: env[k] for k in ("SAGAZ_APP_PASSWORD", "SAGAZ_READER_PASSWORD",
                                        "SAGAZ_PGBOUNCER_ADMIN_PASSWORD",
                                        "SAGAZ_PGBOUNCER_STATS_PASSWORD")}}
    process = subprocess.Popen(
        ["/bin/sh", str(service_dir / "deploy" / "pgbouncer" / "pgbouncer-start.sh"),
         str(run / "pgbouncer.ini")], env=start_env, preexec_fn=user.preexec(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            result = subprocess.run(
                [psql, "-X", "-At", "-h", "127.0.0.1", "-p", str(port), "-U", "pgbouncer_admin",
                 "-d", "pgbouncer", "-c", "SHOW VERSION"], capture_output=True, text=True,
                env={**os.environ, "PGPASSWORD": env["SAGAZ_PGBOUNCER_ADMIN_PASSWORD"], **tls},
                timeout=10)
            if result.returncode == 0 or process.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert result.returncode == 0, (result.stderr, process.poll())
        assert "PgBouncer" in result.stdout
        auth = run / "auth" / "userlist.txt"
        assert stat.S_IMODE(auth.stat().st_mode) == 0o600
        assert f'"sagaz" "{env["SAGAZ_APP_PASSWORD"]}"' in auth.read_text()
        wrong = subprocess.run(
            [psql, "-X", "-h", "127.0.0.1", "-p", str(port), "-U", "pgbouncer_admin",
             "-d", "pgbouncer", "-c", "SHOW VERSION"], capture_output=True, text=True,
            env={**os.environ, "PGPASSWORD": "wrong", **tls}, timeout=10)
        assert wrong.returncode != 0 and "authentication failed" in wrong.stderr
        # The exporters' user may SHOW, not PAUSE or RELOAD.
        def as_stats(command: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [psql, "-X", "-At", "-h", "127.0.0.1", "-p", str(port), "-U", "pgbouncer_stats",
                 "-d", "pgbouncer", "-c", command], capture_output=True, text=True,
                env={**os.environ, "PGPASSWORD": env["SAGAZ_PGBOUNCER_STATS_PASSWORD"]},
                timeout=10)
        assert as_stats("SHOW POOLS").returncode == 0
        reload = as_stats("RELOAD")
        assert reload.returncode != 0 and "admin access needed" in reload.stderr
        plain = subprocess.run(
            [psql, "-X", "-h", "127.0.0.1", "-p", str(port), "-U", "pgbouncer_admin",
             "-d", "pgbouncer", "-c", "SHOW VERSION"], capture_output=True, text=True,
            env={**os.environ, "PGPASSWORD": env["SAGAZ_PGBOUNCER_ADMIN_PASSWORD"],
                 "PGSSLMODE": "disable"}, timeout=10)
        assert plain.returncode != 0 and "SSL required" in plain.stderr
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0].decode(errors="replace")
    assert "FATAL" not in output, output


# -- the generated scripts and SQL against a real PostgreSQL ---------------------------------------

@pytest.fixture
def cluster(local_cluster: Any) -> Any:
    """The session's local cluster: the server the generated scripts run against."""
    return local_cluster


def _run(script: Path, shell: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([shell, str(script)], env=env, capture_output=True, text=True,
                          timeout=60)


def test_generated_init_scripts_and_schema_run_on_postgresql(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cluster: Any,
) -> None:
    from sagaz.ha.local import SUPERUSER
    from sagaz.storage.postgresql.migrate import migrate

    deploy = generate(capsys, tmp_path / "deploy", "--with-ha")
    env = load_env(deploy / ".env")
    host, port = cluster.primary.host, str(cluster.primary.port)
    # Fresh names, so this test's roles and database are its own on the shared cluster.
    suffix = os.urandom(3).hex()
    names = {"SAGAZ_APP_USER": f"app_{suffix}", "SAGAZ_READER_USER": f"reader_{suffix}",
             "SAGAZ_REPLICATION_USER": f"repl_{suffix}", "SAGAZ_DATABASE": f"db_{suffix}",
             "SAGAZ_MONITOR_USER": f"monitor_{suffix}"}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "SAGAZ_"))}
    base["PATH"] = f"{cluster.state.bindir}:{base['PATH']}"
    # As in the containers: every client verifies the server (the local cluster's CA here).
    base.update(PGSSLMODE="verify-full", PGSSLROOTCERT=str(cluster.tls.ca_cert))
    admin = {**base, **names, "PGHOST": host, "PGPORT": port, "PGUSER": SUPERUSER,
             "PGPASSWORD": cluster.passwords[SUPERUSER],
             **{k: env[k] for k in ("SAGAZ_APP_PASSWORD", "SAGAZ_READER_PASSWORD",
                                    "SAGAZ_REPLICATION_PASSWORD", "SAGAZ_MONITOR_PASSWORD")}}
    for _ in range(2):  # idempotent
        result = _run(deploy / "init-primary.sh", "bash", admin)
        assert result.returncode == 0, result.stderr
    assert "pg_hba.conf" not in result.stdout  # not next to a data directory: SQL part only

    app = {**base, "PGHOST": host, "PGPORT": port, "PGUSER": names["SAGAZ_APP_USER"],
           "PGPASSWORD": env["SAGAZ_APP_PASSWORD"], "PGDATABASE": names["SAGAZ_DATABASE"]}
    first = _run(deploy / "init-schema.sh", "sh", app)
    assert first.returncode == 0, first.stderr
    assert "applying migration 0001_saga_tables" in first.stdout
    again = _run(deploy / "init-schema.sh", "sh", app)
    assert again.returncode == 0, again.stderr
    assert "applying migration" not in again.stdout

    def dsn(user: str, password: str) -> str:
        return (f"host={host} port={port} user={user} password={password} "
                f"dbname={names['SAGAZ_DATABASE']} sslmode=verify-full "
                f"sslrootcert={cluster.tls.ca_cert}")

    with psycopg.connect(dsn(names["SAGAZ_APP_USER"], env["SAGAZ_APP_PASSWORD"]),
                         autocommit=True) as conn:
        assert migrate(conn) == []  # sagaz finds the schema current: the same bookkeeping
        stats = conn.execute("SELECT table_name, partition_name "
                             "FROM get_partition_statistics()").fetchall()
        assert {t for t, _ in stats} == {"saga_executions", "saga_outbox", "saga_audit_log"}
        assert len(stats) > 3 + 3  # DEFAULT partitions and dated ones
        conn.execute("INSERT INTO saga_executions (saga_id, saga_name, status) "
                     "VALUES (gen_random_uuid(), 'x', 'PENDING')")
    reader = dsn(names["SAGAZ_READER_USER"], env["SAGAZ_READER_PASSWORD"])
    with psycopg.connect(reader, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM saga_executions").fetchone() == (1,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM saga_executions")
    # Least privilege, as init-primary.sh and init-schema.sh leave it (roles.sql, migrations as
    # the application): the reader reads sagaz's tables only, the application has no
    # cluster-wide power and does not own the database.
    superuser = dsn(SUPERUSER, cluster.passwords[SUPERUSER])
    assert_reader_is_least_privileged(reader, foreign_table=create_foreign_table(superuser))
    assert_app_role_is_confined(dsn(names["SAGAZ_APP_USER"], env["SAGAZ_APP_PASSWORD"]),
                                superuser, app_user=names["SAGAZ_APP_USER"],
                                database=names["SAGAZ_DATABASE"])
    with psycopg.connect(dsn(SUPERUSER, cluster.passwords[SUPERUSER]),
                         autocommit=True) as conn:
        row = conn.execute("SELECT rolreplication, rolsuper FROM pg_roles WHERE rolname = %s",
                           (names["SAGAZ_REPLICATION_USER"],)).fetchone()
        assert row == (True, False)
        # postgres_exporter's role: pg_monitor, and no way into the application's database.
        row = conn.execute("SELECT pg_has_role(%s, 'pg_monitor', 'MEMBER'), "
                           "has_database_privilege(%s, %s, 'CONNECT')",
                           (names["SAGAZ_MONITOR_USER"],) * 2 + (names["SAGAZ_DATABASE"],)
                           ).fetchone()
        assert row == (True, False)

    # The replica bootstrap: a real pg_basebackup with its own slot, twice (a re-clone drops the
    # slot its previous clone left behind).
    replica = tmp_path / "replica"
    replica.mkdir()
    clone = {**base, "PGDATA": str(replica / "pgdata"), "SAGAZ_ROLE": "replica",
             "SAGAZ_PRIMARY_HOST": host, "SAGAZ_PRIMARY_PORT": port,
             "SAGAZ_REPLICATION_USER": names["SAGAZ_REPLICATION_USER"],
             "SAGAZ_REPLICATION_SLOT": f"slot_{suffix}",
             "SAGAZ_REPLICATION_PASSWORD": env["SAGAZ_REPLICATION_PASSWORD"]}
    try:
        for _ in range(2):
            shutil.rmtree(replica / "pgdata", ignore_errors=True)
            result = _run(deploy / "replica-bootstrap.sh", "sh", clone)
            assert result.returncode == 0, result.stderr
            assert (replica / "pgdata" / "PG_VERSION").exists()
            assert (replica / "pgdata" / "standby.signal").exists()
            auto = (replica / "pgdata" / "postgresql.auto.conf").read_text()
            assert "passfile=" in auto and env["SAGAZ_REPLICATION_PASSWORD"] not in auto
            # pg_basebackup -R kept the TLS parameters: the replica streams over verified TLS.
            assert "sslmode=''verify-full''" in auto and str(cluster.tls.ca_cert) in auto, auto
            assert stat.S_IMODE((replica / "replication.pgpass").stat().st_mode) == 0o600
        with psycopg.connect(dsn(SUPERUSER, cluster.passwords[SUPERUSER]),
                             autocommit=True) as conn:
            slots = conn.execute("SELECT count(*) FROM pg_replication_slots "
                                 "WHERE slot_name = %s", (f"slot_{suffix}",)).fetchone()
            assert slots == (1,)
    finally:
        with psycopg.connect(dsn(SUPERUSER, cluster.passwords[SUPERUSER]),
                             autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                         "WHERE slot_name = %s", (f"slot_{suffix}",))
