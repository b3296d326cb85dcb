"""A PgBouncer process: its pgbouncer.ini (rendered from the template the generated deployments
use too), its auth file, and its lifecycle (start, RELOAD via SIGHUP, stop)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sagaz.deploy.render import render
from sagaz.errors import ConfigurationError, SagazError
from sagaz.ha.addresses import accepts_connections
from sagaz.ha.osuser import ServiceUser, check_reachable, process_alive, service_user
from sagaz.private_files import (
    create_private_file,
    make_private_dir,
    open_private_append,
    write_private_file,
)
from sagaz.tls import TlsFiles

__all__ = ["Backend", "PgBouncer", "PoolSettings", "READ_POOL", "WRITE_POOL", "find_pgbouncer",
           "server_tls_sslmode", "tls_template_values"]


@dataclass(frozen=True)
class PoolSettings:
    pool_mode: str
    max_client_conn: int
    default_pool_size: int
    min_pool_size: int = 0
    reserve_pool_size: int = 5
    server_login_retry: int = 1
    query_wait_timeout: int = 30
    server_check_delay: int = 10
    """Seconds an idle server connection may go unchecked before it is handed out again."""


WRITE_POOL = PoolSettings("transaction", max_client_conn=200, default_pool_size=25)
"""pgbouncer-rw: short OLTP transactions to the primary (the HA design's figures)."""
READ_POOL = PoolSettings("transaction", max_client_conn=300, default_pool_size=50,
                         server_check_delay=2)
"""pgbouncer-ro: reads over the replicas (the HA design's figures). Checked more often: a
replica that died leaves connections that only a check (or the supervisor's RELOAD) drops."""


@dataclass(frozen=True)
class Backend:
    """One [databases] entry: clients asking for ``name`` reach ``dbname`` at host:port."""

    name: str
    host: str
    port: int
    dbname: str


@dataclass
class PgBouncer:
    directory: Path
    port: int
    backends: list[Backend]
    passwords: dict[str, str]
    """Users PgBouncer accepts, with their passwords (also used to log in to PostgreSQL)."""
    admin_user: str
    """May run every console command (PAUSE, RESUME, RELOAD, SHUTDOWN)."""
    settings: PoolSettings = WRITE_POOL
    role: str = "rw"
    listen_addr: str = "127.0.0.1"
    tls: TlsFiles | None = None
    """TLS on both sides (the local cluster's pools): clients must use it, and PgBouncer verifies
    the servers against the CA. None for a pool in front of a server without TLS (benchmarks and
    tests in front of a plain PostgreSQL)."""
    server_tls_sslmode: str | None = None
    """Overrides how the servers are verified (default: :func:`server_tls_sslmode`); the write
    benchmark uses ``require`` or ``disable`` in front of a server whose CA it does not know."""
    user: ServiceUser = field(default_factory=service_user)
    process: subprocess.Popen[bytes] | None = None
    stats_user: str = ""
    """May only SHOW on the console (pools, stats); the admin user when empty."""

    @property
    def config_path(self) -> Path:
        return self.directory / "pgbouncer.ini"

    @property
    def log_path(self) -> Path:
        return self.directory / "pgbouncer.log"

    def write_config(self) -> None:
        """Write pgbouncer.ini and the auth file (0600, in a 0700 directory: passwords)."""
        make_private_dir(self.directory)
        check_reachable(self.user, self.directory)
        auth = self.directory / "userlist.txt"
        # Replaced by a new file (a new inode), not rewritten in place: PgBouncer reloads its
        # auth file only when device, inode, size or mtime (whole seconds) changed, and a new
        # password of the same length written within the second would otherwise be ignored.
        write_private_file(
            auth, "".join(f'"{u}" "{p}"\n' for u, p in sorted(self.passwords.items())),
            atomic=True)
        write_private_file(self.config_path, render(
            "pgbouncer/pgbouncer.ini.j2", role=self.role, databases=self.backends,
            listen_addr=self.listen_addr, listen_port=self.port,
            unix_socket_dir=str(self.directory), logfile=str(self.log_path),
            pidfile=str(self.directory / "pgbouncer.pid"), auth_file=str(auth),
            admin_user=self.admin_user, stats_user=self.stats_user or self.admin_user,
            **tls_template_values(self.tls, self.backends, self.server_tls_sslmode),
            **asdict(self.settings)))
        # PgBouncer would create its log with its umask (0644): it names users and clients.
        create_private_file(self.log_path)
        self.user.own(self.directory)

    def configured_hosts(self, database: str) -> list[str]:
        """The hosts pgbouncer.ini names for ``database`` (empty when there is no config yet):
        what the running PgBouncer serves once it has (re)loaded the file."""
        try:
            text = self.config_path.read_text()
        except OSError:
            return []
        match = re.search(rf"^{re.escape(database)} = host=(\S+) ", text, re.MULTILINE)
        return match[1].split(",") if match else []

    def start(self, timeout: float = 10.0) -> None:
        """Start PgBouncer (writing its files first) and wait until it accepts connections."""
        binary = find_pgbouncer()
        self.write_config()
        (self.directory / "pgbouncer.pid").unlink(missing_ok=True)
        # Errors before the log file opens (a bad config) go to stderr: keep them.
        with os.fdopen(open_private_append(self.directory / "pgbouncer.stderr"), "ab") as stderr:
            self.process = subprocess.Popen(
                [binary, str(self.config_path)], cwd=self.directory, env=self.user.env(),
                preexec_fn=self.user.preexec(), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not accepts_connections(self.listen_addr, self.port, timeout=0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SagazError(
                    f"pgbouncer-{self.role} did not start on {self.listen_addr}:{self.port}; "
                    f"see {self.log_path}:\n{_tail(self.log_path)}"
                    f"\n{_tail(self.directory / 'pgbouncer.stderr')}")
            time.sleep(0.02)

    def reload(self, backends: list[Backend] | None = None) -> None:
        """Rewrite the config (new backends, e.g. after a failover) and RELOAD it."""
        if backends is not None:
            self.backends = backends
        self.write_config()
        self.send_signal(signal.SIGHUP)

    @property
    def pid(self) -> int | None:
        """The running PgBouncer's pid (also one started by an earlier command: its pidfile)."""
        if self.process is not None:
            return self.process.pid if self.process.poll() is None else None
        try:
            pid = int((self.directory / "pgbouncer.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid, None) else None

    def send_signal(self, how: int) -> None:
        pid = self.pid
        if pid is not None:
            os.kill(pid, how)

    def stop(self, how: int = signal.SIGINT, timeout: float = 10.0) -> None:
        """Stop PgBouncer: SIGINT waits for running transactions, SIGTERM (or SIGKILL) does not."""
        pid = self.pid
        process, self.process = self.process, None
        if pid is None:
            return
        os.kill(pid, how)
        deadline = time.monotonic() + timeout
        while _alive(pid, process):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + timeout
            time.sleep(0.02)


def tls_template_values(tls: TlsFiles | None, backends: list[Backend],
                        server_mode: str | None = None) -> dict[str, str]:
    """The TLS paths pgbouncer.ini.j2 takes (none: no TLS section)."""
    if tls is None:
        return {}
    return {"tls_cert_file": str(tls.server_cert), "tls_key_file": str(tls.server_key),
            "tls_ca_file": str(tls.ca_cert),
            "server_tls_sslmode": server_mode or server_tls_sslmode([b.host for b in backends])}


def server_tls_sslmode(hosts: list[str]) -> str:
    """How PgBouncer verifies the servers of [databases] entries with these ``host=`` values.

    verify-full (the CA and the host name) wherever it can. PgBouncer before 1.25 checks a host
    list (``host=a,b``, how pgbouncer-ro balances over the replicas) as one name, the whole
    string, and then refuses every server (pgbouncer/pgbouncer#1300): such a pool uses verify-ca,
    the chain to the cluster CA. That CA signs nothing but the cluster's own server certificate,
    which every server of the list holds, so the check proves the same: the server holds the
    cluster's key."""
    return "verify-ca" if any("," in host for host in hosts) else "verify-full"


def find_pgbouncer() -> str:
    """The pgbouncer binary: on the PATH, else where Debian puts it."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(binary):
        raise ConfigurationError(
            "pgbouncer is not installed (looked on the PATH and at /usr/sbin/pgbouncer): "
            "install it (Debian/Ubuntu: apt-get install pgbouncer; macOS: brew install pgbouncer)")
    return binary


def _alive(pid: int, process: subprocess.Popen[bytes] | None) -> bool:
    if process is not None:
        return process.poll() is None  # also reaps our child
    try:
        # A child of this process (started by an earlier PgBouncer object) stays a zombie,
        # which signal 0 still reaches, until it is reaped.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass  # not our child: a PgBouncer started by an earlier command
    return process_alive(pid)


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
