"""The secrets of the local cluster: every file holding a secret or state is private to its
owner, `dev status` warns about one that is not, and `sagaz dev rotate-secrets` changes
passwords for real (the database first, then the files, then the pools) without downtime."""

from __future__ import annotations

import json
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from devcluster import DevCluster, dev_cluster

from sagaz.ha.local import APP_USER, READER_USER, LocalCluster
from sagaz.ha.rotation import ROLES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dev() -> Iterator[DevCluster]:
    with dev_cluster(replicas=1) as cluster:
        yield cluster


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_secret_and_state_file_of_the_cluster_is_private(dev: DevCluster) -> None:
    d = dev.directory
    assert _mode(d) == 0o700
    private = [d / "cluster.json", d / "secrets.json", d / "supervisor.log", d / "supervisor.pid",
               d / ".lock"]
    for role in ("rw", "ro"):
        assert _mode(d / f"pgbouncer-{role}") == 0o700
        private += [d / f"pgbouncer-{role}" / name
                    for name in ("userlist.txt", "pgbouncer.ini", "pgbouncer.log",
                                 "pgbouncer.stderr")]
    for node in ("node0", "node1"):
        assert _mode(d / node) == 0o700
        private.append(d / node / "postgres.log")
    private.append(d / "node1" / ".pgpass")
    assert {str(p.relative_to(d)): oct(_mode(p)) for p in private} == {
        str(p.relative_to(d)): oct(0o600) for p in private}


def test_status_warns_about_a_secrets_file_others_can_read(dev: DevCluster) -> None:
    secrets_file = dev.directory / "secrets.json"
    secrets_file.chmod(0o644)
    try:
        result = dev.cli("dev", "status")
        assert result.code == 0, result.out + result.err
        warnings = [line for line in result.err.splitlines() if line.startswith("warning:")]
        assert warnings == [
            f"warning: {secrets_file} has mode 0644: other users of this machine can read it, "
            f"and it holds secrets or saga state; run `chmod 600 {secrets_file}`"]
    finally:
        secrets_file.chmod(0o600)
    assert "warning" not in dev.cli("dev", "status").err


# -- sagaz dev rotate-secrets ----------------------------------------------------------------------

def _urls(cluster: LocalCluster, user: str) -> dict[str, str]:
    """Where ``user`` logs in: straight to the primary (and for the reader, the replica), and
    through both pools."""
    s = cluster.state
    urls = {"direct": cluster.dsn(user=user), "rw": cluster.dsn(user=user, port=s.rw_port),
            "ro": cluster.dsn(user=user, port=s.ro_port)}
    if user == READER_USER:
        urls["replica"] = cluster.node_dsn(s.replicas[0], user=user, dbname=s.dbname)
    return urls


def _login(dsn: str) -> str | None:
    """None when a login and a query work, else the error."""
    try:
        with psycopg.connect(dsn, autocommit=True, prepare_threshold=None,
                             connect_timeout=5) as conn:
            conn.execute("SELECT 1").fetchone()
    except psycopg.Error as exc:
        return " ".join(str(exc).split())
    return None


class LoginLoop:
    """Logs in again and again as other roles while a rotation runs: none may fail."""

    def __init__(self, dsns: dict[str, str]):
        self.dsns = dsns
        self.failures: list[str] = []
        self.logins = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, dsn in self.dsns.items():
                error = _login(dsn)
                self.logins += 1
                if error:
                    self.failures.append(f"{name}: {error}")

    def __enter__(self) -> LoginLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.mark.parametrize(("role", "others"), [(APP_USER, READER_USER), (READER_USER, APP_USER)])
def test_rotate_secrets_changes_one_password_everywhere_without_touching_the_others(
        dev: DevCluster, role: str, others: str) -> None:
    before = dev.cluster
    old_urls, other_urls = _urls(before, role), _urls(before, others)
    assert all(_login(url) is None for url in old_urls.values())
    # A session opened before the rotation (through the write pool) keeps working after it.
    held = psycopg.connect(old_urls["rw"], autocommit=True, prepare_threshold=None)
    try:
        with LoginLoop({f"{others} {k}": v for k, v in other_urls.items()}) as loop:
            time.sleep(0.3)
            result = dev.cli("dev", "rotate-secrets", "--role", role)
            time.sleep(0.3)
        assert result.code == 0, result.out + result.err
        assert f"rotated the password of {role}" in result.out
        assert loop.logins > 10 and loop.failures == []
        assert held.execute("SELECT 1").fetchone() == (1,)
    finally:
        held.close()

    after = dev.cluster
    assert after.passwords[role] != before.passwords[role]
    assert {k: v for k, v in after.passwords.items() if k != role} == \
        {k: v for k, v in before.passwords.items() if k != role}
    for where, url in old_urls.items():
        error = _login(url)
        assert error is not None and "authentication failed" in error, (where, error)
    for where, url in _urls(after, role).items():
        assert _login(url) is None, where
    assert _mode(dev.directory / "secrets.json") == 0o600
    assert not (dev.directory / ".secrets-rotating.json").exists()
    # The password went nowhere but secrets.json: no server or pool log shows it.
    new = after.passwords[role]
    for log in [*dev.directory.glob("node*/postgres.log"), *dev.directory.glob("pgbouncer-*/*.log"),
                dev.directory / "supervisor.log"]:
        assert new not in log.read_text(errors="replace"), log


def test_rotating_every_role_keeps_replication_the_pools_and_status_working(
        dev: DevCluster) -> None:
    before = dev.cluster
    result = dev.cli("dev", "rotate-secrets")
    assert result.code == 0, result.out + result.err
    after = dev.cluster
    assert all(after.passwords[r] != before.passwords[r] for r in ROLES)
    # The replica streams with the new replication password once it reconnects (a restart
    # forces that).
    assert dev.cli("dev", "restart", "node1").code == 0
    deadline = time.monotonic() + 30
    while True:
        status = dev.cli("dev", "status", "--json")
        health = json.loads(status.out) if status.out else {}
        if status.code == 0 and health.get("healthy"):
            break
        assert time.monotonic() < deadline, status.out + status.err
        time.sleep(0.5)
    assert [r["state"] for r in health["replication"]] == ["streaming"]
    with psycopg.connect(after.dsn(port=after.state.rw_port), autocommit=True,
                         prepare_threshold=None) as conn:
        conn.execute("SELECT 1")
    assert _login(before.node_dsn(before.state.primary)) is not None  # old superuser password


def test_rotate_secrets_of_an_unknown_role_is_one_line_and_exit_2(dev: DevCluster) -> None:
    before = dev.cluster.passwords
    result = dev.cli("dev", "rotate-secrets", "--role", "nobody")
    assert result.code == 2
    assert "no generated password for role 'nobody': --role is one of postgres, sagaz, " \
           "sagaz_reader, replicator" in " ".join(result.err.split())
    assert "Traceback" not in result.err
    assert dev.cluster.passwords == before
