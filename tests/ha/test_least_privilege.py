"""Least privilege on `sagaz dev up --ha`: the read-only role reads the sagaz tables and nothing
else, through the read pool (a replica) and directly on the primary; every listing and
dashboard query still works with it; the application role has no cluster-wide power; the
PgBouncer consoles have users of their own."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from devcluster import DevCluster, dev_cluster, run_cli
from privilege_probes import (
    assert_app_role_is_confined,
    assert_reader_is_least_privileged,
    connect,
    create_foreign_table,
    refusal,
)
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from sagaz import Saga, SagaConfig, SagaStatus
from sagaz.ha.health import REPLICATION
from sagaz.ha.local import (
    APP_USER,
    PGBOUNCER_ADMIN,
    PGBOUNCER_STATS,
    READER_USER,
    SUPERUSER,
    LocalCluster,
)
from sagaz.storage.postgresql import PostgreSQLSagaStorage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dev() -> Iterator[DevCluster]:
    with dev_cluster(replicas=1) as cluster:
        yield cluster


def _superuser(cluster: LocalCluster) -> str:
    return cluster.node_dsn(cluster.state.primary, dbname=cluster.state.dbname)


def _replicated(cluster: LocalCluster, query: str, timeout: float = 10.0) -> None:
    """Wait until ``query`` (as the superuser) answers true on the replica."""
    replica = cluster.state.replicas[0]
    deadline = time.monotonic() + timeout
    with connect(cluster.node_dsn(replica, dbname=cluster.state.dbname)) as conn:
        while conn.execute(query).fetchone() != (True,):
            assert time.monotonic() < deadline, f"not replayed within {timeout} s: {query}"
            time.sleep(0.05)


def test_the_reader_reads_sagaz_tables_only_through_the_read_pool_and_on_the_primary(
    dev: DevCluster,
) -> None:
    cluster = dev.cluster
    foreign = create_foreign_table(_superuser(cluster))
    _replicated(cluster, f"SELECT to_regclass('{foreign}') IS NOT NULL")
    read_pool = cluster.env()["SAGAZ_ANALYTICS_URL"]
    with connect(read_pool) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
    assert_reader_is_least_privileged(read_pool, foreign_table=foreign)
    on_primary = cluster.dsn(user=READER_USER)
    with connect(on_primary) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    assert_reader_is_least_privileged(on_primary, foreign_table=foreign)


def test_the_reader_turning_read_only_off_gains_no_write(dev: DevCluster) -> None:
    with connect(dev.cluster.dsn(user=READER_USER)) as conn:
        conn.execute("SET default_transaction_read_only = off")
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")
        assert conn.execute("SHOW transaction_read_only").fetchone() == ("off",)
        for statement in ("INSERT INTO saga_outbox DEFAULT VALUES", "DELETE FROM saga_executions",
                          "CREATE TEMP TABLE t (x int)", "SELECT pg_advisory_lock(7)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_partitions_created_later_are_readable_by_the_reader(dev: DevCluster) -> None:
    cluster = dev.cluster
    with connect(cluster.dsn()) as app:  # maintenance runs as the application, as everywhere
        row = app.execute("SELECT create_saga_executions_partition("
                          "(now() + interval '5 years')::date)").fetchone()
    assert row is not None
    partition = str(row[0])
    with connect(_superuser(cluster)) as admin:
        unreadable = admin.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace "
            "AND c.relkind IN ('r', 'p') AND NOT has_table_privilege(%s, c.oid, 'SELECT')",
            (READER_USER,)).fetchall()
    assert unreadable == []
    with connect(cluster.dsn(user=READER_USER)) as reader:
        assert reader.execute(f"SELECT count(*) FROM {partition}").fetchone() == (0,)
        names = {r[0] for r in reader.execute(
            "SELECT partition_name FROM get_partition_statistics(true)")}
    assert partition in names


async def _run_saga_and_read_it_back(env: dict[str, str]) -> str:
    """A saga written through the write pool, read back through the read pool as of the write's
    LSN (the read-only storage's get_saga(min_lsn=...): pg_last_wal_replay_lsn as the reader)."""
    write = PostgreSQLSagaStorage(env["SAGAZ_STORAGE_URL"], auto_migrate=False)
    read = PostgreSQLSagaStorage(env["SAGAZ_ANALYTICS_URL"], readonly=True)
    try:
        saga = Saga(name="least-privilege", config=SagaConfig(storage=write))
        saga.add_step("only", lambda ctx: {"done": True})
        result = await saga.execute({})
        state = await read.get_saga(result.saga_id, min_lsn=await write.write_lsn(), wait=10)
        assert state is not None and state.status is SagaStatus.COMPLETED
        return result.saga_id
    finally:
        await read.close()
        await write.close()


def test_listings_and_replica_reads_work_as_the_reader(
    dev: DevCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = dev.cluster.env()
    saga_id = asyncio.run(_run_saga_and_read_it_back(env))
    # The CLI's listings read SAGAZ_ANALYTICS_URL; the storage URL names an empty SQLite file,
    # so what they print came through the read pool, as the reader.
    monkeypatch.setenv("SAGAZ_STORAGE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    monkeypatch.setenv("SAGAZ_ANALYTICS_URL", env["SAGAZ_ANALYTICS_URL"])
    listed = run_cli("sagas", "list", "--json")
    assert listed.code == 0, listed.err
    assert saga_id in listed.out
    shown = run_cli("sagas", "show", saga_id)
    assert shown.code == 0, shown.err
    assert "least-privilege" in shown.out and "COMPLETED" in shown.out


def test_lag_figures_are_visible_to_the_reader(dev: DevCluster) -> None:
    cluster = dev.cluster
    with connect(cluster.dsn(user=READER_USER)) as conn:
        rows = conn.cursor(row_factory=dict_row).execute(REPLICATION).fetchall()
    [replica] = rows
    assert replica["name"] == "node1" and replica["state"] == "streaming"
    assert isinstance(replica["replay_lag_bytes"], int)
    # `dev status` reads its figures as the reader too.
    status = dev.cli("dev", "status", "--json")
    assert status.code == 0, status.out + status.err
    report = json.loads(status.out)
    assert report["healthy"] is True and report["errors"] == []
    assert isinstance(report["replication"][0]["replay_lag_bytes"], int)
    assert report["partitions"]["saga_executions"] >= 2


def test_the_application_role_has_no_cluster_wide_power(dev: DevCluster) -> None:
    cluster = dev.cluster
    assert_app_role_is_confined(cluster.dsn(), _superuser(cluster), app_user=APP_USER,
                                database=cluster.state.dbname)


def _console(cluster: LocalCluster, role: str, user: str) -> psycopg.Connection[Any]:
    return connect(make_conninfo(cluster.stats_dsn(role), user=user,
                                 password=cluster.passwords[user]))


@pytest.mark.parametrize("role", ["rw", "ro"])
def test_pgbouncer_consoles_have_users_of_their_own(dev: DevCluster, role: str) -> None:
    cluster = dev.cluster
    with _console(cluster, role, PGBOUNCER_STATS) as stats:
        assert stats.execute("SHOW POOLS").fetchall()
        with pytest.raises(psycopg.Error, match="admin access needed"):
            stats.execute("RELOAD")
    with _console(cluster, role, PGBOUNCER_ADMIN) as admin:
        admin.execute("RELOAD")
    userlist = (dev.directory / f"pgbouncer-{role}" / "userlist.txt").read_text()
    assert f'"{SUPERUSER}"' not in userlist  # the superuser never goes through a pool
    for user in (APP_USER, READER_USER):
        with pytest.raises(psycopg.OperationalError):
            _console(cluster, role, user).close()
    # The console users are PgBouncer's only: no PostgreSQL role behind them.
    port = cluster.state.rw_port if role == "rw" else cluster.state.ro_port
    for user in (PGBOUNCER_ADMIN, PGBOUNCER_STATS):
        with pytest.raises(psycopg.OperationalError):
            connect(make_conninfo(cluster.dsn(port=port), user=user,
                                  password=cluster.passwords[user])).close()


def test_a_notify_from_the_reader_on_the_primary_is_only_a_hint(dev: DevCluster) -> None:
    """PostgreSQL has no privilege for the NOTIFY statement: on the primary the reader can send
    one (on a replica, recovery refuses it). The relay takes a notification as a hint to poll,
    nothing more; pg_notify() itself is refused (privilege_probes)."""
    assert refusal(dev.cluster.dsn(user=READER_USER), "NOTIFY sagaz_outbox") is None


def test_dev_up_takes_back_what_earlier_versions_granted(dev: DevCluster) -> None:
    """A cluster made by an earlier sagaz: the reader held pg_read_all_data, the application
    owned the database, the pools had no console users of their own. `dev up` (roles.sql
    again) takes it all back."""
    cluster = dev.cluster
    with connect(_superuser(cluster)) as admin:
        admin.execute(f"GRANT pg_read_all_data TO {READER_USER}")
        admin.execute(f"ALTER DATABASE {cluster.state.dbname} OWNER TO {APP_USER}")
    secrets_file = dev.directory / "secrets.json"
    earlier = {u: p for u, p in json.loads(secrets_file.read_text()).items()
               if u not in (PGBOUNCER_ADMIN, PGBOUNCER_STATS)}
    secrets_file.write_text(json.dumps(earlier))
    result = dev.cli("dev", "up", "--ha")
    assert result.code == 0, result.out + result.err
    cluster = dev.cluster
    assert {PGBOUNCER_ADMIN, PGBOUNCER_STATS} <= set(cluster.passwords)
    with _console(cluster, "rw", PGBOUNCER_STATS) as stats:
        assert stats.execute("SHOW POOLS").fetchall()
    foreign = create_foreign_table(_superuser(cluster))
    assert_reader_is_least_privileged(cluster.dsn(user=READER_USER), foreign_table=foreign)
    assert_app_role_is_confined(cluster.dsn(), _superuser(cluster), app_user=APP_USER,
                                database=cluster.state.dbname)
