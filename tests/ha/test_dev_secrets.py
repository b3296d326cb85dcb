"""The secrets of the local cluster: every file holding a secret or state is private to its
owner, `dev status` warns about one that is not, and `sagaz dev rotate-secrets` changes
passwords for real (the database first, then the files, then the pools) without downtime."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from devcluster import DevCluster, dev_cluster

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
