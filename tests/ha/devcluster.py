"""Helpers for the local-cluster tests: real PostgreSQL servers and PgBouncers started by
``sagaz dev up`` (in-process, through ``sagaz.cli.main``) in a temporary directory, on loopback
ports nobody else holds, and always taken down again.

Without the PostgreSQL server binaries or PgBouncer these tests fail (the CI
installs both: .ci/run).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cluster_fixtures import free_base_port
from missing_service import fail_missing

from sagaz.cli import main
from sagaz.errors import ConfigurationError
from sagaz.ha.local import LocalCluster


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(*argv: str) -> CliResult:
    """``sagaz ARGV`` in-process, its output captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return CliResult(code, out.getvalue(), err.getvalue())


def require_cluster_binaries() -> None:
    """Fail when this machine cannot run a local cluster."""
    from sagaz.ha.osuser import service_user
    from sagaz.ha.pgbouncer import find_pgbouncer
    from sagaz.ha.postgres import find_bindir

    try:
        find_bindir()
        find_pgbouncer()
        service_user()
    except ConfigurationError as exc:
        fail_missing(f"the local-cluster tests need PostgreSQL and PgBouncer: {exc}")


@dataclass
class DevCluster:
    directory: Path
    base_port: int
    up: CliResult
    """What the first `sagaz dev up` printed."""

    @property
    def cluster(self) -> LocalCluster:
        """The cluster as cluster.json describes it now (promotions change it)."""
        return LocalCluster.load(self.directory)

    def cli(self, *argv: str) -> CliResult:
        return run_cli(*argv, "--dir", str(self.directory))


@contextlib.contextmanager
def dev_cluster(replicas: int, *up_args: str, base_port: int | None = None,
                clean_up: Callable[[Path], None] | None = None) -> Iterator[DevCluster]:
    """A cluster of ``sagaz dev up --ha --replicas REPLICAS UP_ARGS...`` on ``base_port`` (by
    default one free for its servers and pools). After ``dev down`` and killing leftovers,
    ``clean_up(directory)`` stops what else the test's options started."""
    require_cluster_binaries()
    parent = Path(tempfile.mkdtemp(prefix="sagaz-ha-test-"))
    parent.chmod(0o755)  # the servers run as an unprivileged user when the tests run as root
    directory = parent / "cluster"
    base = free_base_port(replicas + 1) if base_port is None else base_port
    try:
        result = run_cli("dev", "up", "--ha", "--replicas", str(replicas), "--dir",
                         str(directory), "--base-port", str(base), *up_args)
        assert result.code == 0, result.out + result.err
        yield DevCluster(directory, base, result)
    finally:
        if (directory / "cluster.json").exists():
            run_cli("dev", "down", "--purge", "--dir", str(directory))
        kill_leftovers(parent)
        if clean_up is not None:
            clean_up(directory)
        shutil.rmtree(parent, ignore_errors=True)


def processes_of(directory: Path) -> list[int]:
    """Pids whose command line names ``directory`` (our servers, pools, supervisor)."""
    found = []
    needle = str(directory).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry.name))
    return found


def kill_leftovers(directory: Path) -> None:
    """SIGKILL, by pid, whatever a failed test left running in ``directory``."""
    for pid in processes_of(directory):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
