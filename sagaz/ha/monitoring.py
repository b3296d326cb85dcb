"""Monitoring of the local cluster (``sagaz dev up --monitoring``): the machine's Prometheus,
one postgres_exporter per server and one pgbouncer_exporter per pool, on loopback, with the
scrape configuration and alert rules the generated deployments use too (:mod:`sagaz.monitoring`).

Ports (base port P)::

    Prometheus          127.0.0.1:P+2000   http://127.0.0.1:P+2000 (`sagaz dev status`)
    sagaz's endpoint    127.0.0.1:P+2001   `sagaz metrics serve --cluster DIR`, job sagaz
    postgres_exporter   127.0.0.N:P+2002   one per node, on the node's own address (label node)
    pgbouncer_exporter  127.0.0.1:P+2003 (rw), P+2004 (ro)   (label pool)

Credentials are the least the exporters need: postgres_exporter logs in as ``sagaz_monitor``
(pg_monitor, the maintenance database only; sql/roles.sql), pgbouncer_exporter as the console
user that may only SHOW; ``sagaz metrics serve`` reads the HA figures as those and the outbox
backlog as the application (through pgbouncer-rw: its storage opens read-write sessions, which a
replica refuses). Both verify the server over TLS (``sslmode=verify-full`` against the
cluster CA) and read their password from a file of mode 0600, never from the command line or
the environment of a process others can inspect. The metrics endpoints themselves are plain
HTTP on loopback: they carry counters, no secrets.

Layout: ``DIR/monitoring/`` (0700) holds prometheus.yml, alert-rules.yml, the password files,
one ``NAME.pid`` and ``NAME.log`` (0600) per process, and Prometheus' data. The processes run
detached; the supervisor (``sagaz dev supervise``) starts again any that died; ``sagaz dev
down`` stops them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from sagaz.errors import ConfigurationError, SagazError
from sagaz.ha.addresses import accepts_connections
from sagaz.ha.osuser import process_alive, terminate
from sagaz.monitoring.rules import AlertSettings, alert_rules
from sagaz.monitoring.scrape import ScrapeJob, ScrapeTarget, prometheus_config
from sagaz.private_files import make_private_dir, open_private_append, write_private_file

if TYPE_CHECKING:
    from sagaz.ha.local import LocalCluster

__all__ = ["LocalMonitoring", "MonitoredProcess", "PORT_OFFSET", "find_monitoring_binaries"]

logger = logging.getLogger(__name__)

PORT_OFFSET = 2000
"""Prometheus listens on base port + 2000; the exporters on the next ports (module docstring)."""
HIGHEST_OFFSET = PORT_OFFSET + 4
START_TIMEOUT = 20.0
"""Seconds a process has to answer on its port after it was started."""
PGBOUNCER_EXPORTER_PYTHON = "/usr/bin/python3"
"""The interpreter Debian's prometheus-pgbouncer-exporter is installed for."""


@dataclass(frozen=True)
class MonitoredProcess:
    name: str
    argv: list[str]
    env: dict[str, str]
    host: str
    port: int
    ready_path: str
    """Answers 200 once the process serves (``/-/ready``, ``/metrics``)."""
    identity: tuple[str, ...]
    """Arguments that tell this process from any other (its program and listen address): a
    reused pid, or the same program of another cluster, does not count as this process."""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def find_monitoring_binaries() -> dict[str, str]:
    """prometheus, postgres_exporter and the pgbouncer_exporter package, or a usage error that
    says what to install."""
    found: dict[str, str] = {}
    for name, package in (("prometheus", "prometheus"),
                          ("prometheus-postgres-exporter", "prometheus-postgres-exporter")):
        path = shutil.which(name) or f"/usr/bin/{name}"
        if not os.path.exists(path):
            raise ConfigurationError(
                f"{name} is not installed: install it (Debian/Ubuntu: apt-get install {package}) "
                "or leave out --monitoring")
        found[name] = path
    exporter = Path("/usr/lib/python3/dist-packages/prometheus_pgbouncer_exporter")
    if not (os.path.exists(PGBOUNCER_EXPORTER_PYTHON) and exporter.is_dir()):
        raise ConfigurationError(
            "prometheus-pgbouncer-exporter is not installed: install it (Debian/Ubuntu: apt-get "
            "install prometheus-pgbouncer-exporter) or leave out --monitoring")
    found["prometheus-pgbouncer-exporter"] = PGBOUNCER_EXPORTER_PYTHON
    return found


class LocalMonitoring:
    """The monitoring processes of one local cluster."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.directory = cluster.directory / "monitoring"

    # -- addresses -------------------------------------------------------------------------------

    @property
    def prometheus_port(self) -> int:
        return self.cluster.state.base_port + PORT_OFFSET

    @property
    def sagaz_port(self) -> int:
        """Where the job ``sagaz`` looks for sagaz's own endpoint."""
        return self.cluster.state.base_port + PORT_OFFSET + 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    def jobs(self) -> list[ScrapeJob]:
        s = self.cluster.state
        return [
            ScrapeJob("sagaz", [ScrapeTarget(f"127.0.0.1:{self.sagaz_port}")]),
            ScrapeJob("postgres", [ScrapeTarget(f"{s.host(n)}:{s.base_port + PORT_OFFSET + 2}",
                                                {"node": n}) for n in s.nodes]),
            ScrapeJob("pgbouncer", [
                ScrapeTarget(f"127.0.0.1:{s.base_port + PORT_OFFSET + 3 + i}", {"pool": role})
                for i, role in enumerate(("rw", "ro"))]),
        ]

    # -- files -----------------------------------------------------------------------------------

    def _password_file(self, name: str) -> Path:
        return self.directory / f"{name}.password"

    def private_files(self) -> list[Path]:
        """The directory, password files, logs and pid files that exist."""
        if not self.directory.exists():
            return []
        return [self.directory, *sorted(p for p in self.directory.iterdir()
                                        if p.suffix in (".password", ".pgpass", ".log", ".pid"))]

    def write_files(self) -> None:
        """prometheus.yml, alert-rules.yml and the password files (0600)."""
        make_private_dir(self.directory)
        write_private_file(self.directory / "alert-rules.yml",
                           alert_rules(AlertSettings(archive=self.cluster.state.backup)),
                           atomic=True)
        write_private_file(self.directory / "prometheus.yml", prometheus_config(
            self.jobs(), self_address=f"127.0.0.1:{self.prometheus_port}",
            rule_files=["alert-rules.yml"]), atomic=True)
        self.write_password_files()

    def _password_files(self) -> dict[Path, str]:
        from sagaz.ha.local import APP_USER, MONITOR_USER, PGBOUNCER_STATS

        s = self.cluster.state
        files = {self._password_file("postgres-exporter"): self.cluster.passwords[MONITOR_USER],
                 self.directory / "sagaz-metrics.pgpass":
                     f"127.0.0.1:{s.rw_port}:{s.dbname}:{APP_USER}:"
                     f"{self.cluster.passwords[APP_USER]}\n"}
        for role, port in (("rw", s.rw_port), ("ro", s.ro_port)):
            files[self.directory / f"pgbouncer-{role}.pgpass"] = (
                f"127.0.0.1:{port}:pgbouncer:{PGBOUNCER_STATS}:"
                f"{self.cluster.passwords[PGBOUNCER_STATS]}\n")
        return files

    def write_password_files(self) -> None:
        """The password files of the current secrets.json (after a rotation too), each written
        only when it changed."""
        for path, text in self._password_files().items():
            try:
                if path.read_text() == text:
                    continue
            except OSError:
                pass
            write_private_file(path, text, atomic=True)

    # -- processes -------------------------------------------------------------------------------

    def processes(self) -> list[MonitoredProcess]:
        from sagaz.ha.local import MONITOR_USER, PGBOUNCER_STATS

        binaries = find_monitoring_binaries()
        s = self.cluster.state
        ca = str(self.cluster.tls.ca_cert)
        found = [self._metrics_process(), MonitoredProcess(
            "prometheus",
            [binaries["prometheus"], f"--config.file={self.directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.directory / 'prometheus-data'}",
             f"--web.listen-address=127.0.0.1:{self.prometheus_port}",
             "--storage.tsdb.retention.time=7d"],
            {}, "127.0.0.1", self.prometheus_port, "/-/ready",
            (binaries["prometheus"], f"--web.listen-address=127.0.0.1:{self.prometheus_port}"))]
        for target in self.jobs()[1].targets:
            node = target.labels["node"]
            host, port = target.address.rsplit(":", 1)
            found.append(MonitoredProcess(
                f"postgres-exporter-{node}",
                [binaries["prometheus-postgres-exporter"], f"--web.listen-address={host}:{port}",
                 "--log.level=warn"],
                {"DATA_SOURCE_URI": f"{s.host(node)}:{s.port(node)}/postgres?"
                                    f"sslmode=verify-full&sslrootcert={ca}&connect_timeout=3",
                 "DATA_SOURCE_USER": MONITOR_USER,
                 "DATA_SOURCE_PASS_FILE": str(self._password_file("postgres-exporter"))},
                host, int(port), "/metrics",
                (binaries["prometheus-postgres-exporter"], f"--web.listen-address={host}:{port}")))
        script = resources.files("sagaz.monitoring").joinpath("pgbouncer_exporter.py")
        for target, (role, pool_port) in zip(self.jobs()[2].targets,
                                             (("rw", s.rw_port), ("ro", s.ro_port)), strict=True):
            host, port = target.address.rsplit(":", 1)
            found.append(MonitoredProcess(
                f"pgbouncer-exporter-{role}",
                [binaries["prometheus-pgbouncer-exporter"], str(script), "--host", host,
                 f"--port={port}", "--pgbouncer-host", "127.0.0.1", "--pgbouncer-port",
                 str(pool_port), "--pgbouncer-user", PGBOUNCER_STATS],
                {"PGPASSFILE": str(self.directory / f"pgbouncer-{role}.pgpass"),
                 "PGSSLMODE": "verify-full", "PGSSLROOTCERT": ca, "PGCONNECT_TIMEOUT": "3"},
                host, int(port), "/metrics", (str(script), f"--port={port}")))
        return found

    def _metrics_process(self) -> MonitoredProcess:
        """``sagaz metrics serve --cluster DIR``: the HA figures and the outbox backlog."""
        from sagaz.ha.local import APP_USER

        s = self.cluster.state
        cluster = f"--cluster={self.cluster.directory}"
        port = f"--port={self.sagaz_port}"
        # The password comes from the pass file (libpq's passfile), not from the URL.
        url = (f"postgresql://{APP_USER}@127.0.0.1:{s.rw_port}/{s.dbname}?sslmode=verify-full"
               f"&sslrootcert={self.cluster.tls.ca_cert}"
               f"&passfile={self.directory / 'sagaz-metrics.pgpass'}")
        return MonitoredProcess(
            "sagaz-metrics",
            [sys.executable, "-m", "sagaz", "--log-level", "WARNING", "metrics", "serve",
             cluster, port, "--host=127.0.0.1"],
            {"SAGAZ_STORAGE_URL": url}, "127.0.0.1", self.sagaz_port, "/healthz",
            ("serve", cluster, port))

    def _pid_path(self, process: MonitoredProcess) -> Path:
        return self.directory / f"{process.name}.pid"

    def pid(self, process: MonitoredProcess) -> int | None:
        """The pid of ``process`` when it runs (a reused pid of another program does not count:
        its command line must be the one this cluster starts)."""
        try:
            pid = int(self._pid_path(process).read_text().strip())
        except (OSError, ValueError):
            return None
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return None  # our child, exited and now reaped
        if not process_alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return pid  # no /proc (macOS): trust the pid file
        arguments = cmdline.split("\0")
        return pid if all(a in arguments for a in process.identity) else None

    def stopped(self) -> list[str]:
        return [p.name for p in self.processes() if self.pid(p) is None]

    def running(self) -> list[str]:
        if not self.directory.exists():
            return []
        return [p.name for p in self.processes() if self.pid(p) is not None]

    def preflight(self) -> None:
        """Usage errors before anything starts: missing packages, ports out of range."""
        find_monitoring_binaries()
        highest = self.cluster.state.base_port + HIGHEST_OFFSET
        if highest > 65535:
            raise ConfigurationError(
                f"--monitoring needs ports up to base port + {HIGHEST_OFFSET} ({highest}), "
                f"beyond 65535: recreate the cluster with a --base-port of at most "
                f"{65535 - HIGHEST_OFFSET}")

    def start(self, progress: Callable[[str], None] = lambda _: None) -> list[str]:
        """Write the files and start every process that is not running (Prometheus re-reads a
        changed configuration); the names started."""
        self.preflight()
        self.write_files()
        started = []
        for process in self.processes():
            pid = self.pid(process)
            if pid is not None:
                if process.name == "prometheus":
                    os.kill(pid, signal.SIGHUP)  # new nodes, new rules
                continue
            progress(f"starting {process.name} ({process.address})")
            self._spawn(process)
            started.append(process.name)
        return started

    def restart_dead(self) -> list[str]:
        """Start again the processes that died (the supervisor's pass), after bringing the
        password files up to date; the names started."""
        self.write_password_files()
        started = []
        for process in self.processes():
            if self.pid(process) is None:
                logger.warning("%s is not running; starting it again", process.name,
                               extra={"action": "monitoring_process_restarted",
                                      "component": process.name})
                self._spawn(process)
                started.append(process.name)
        return started

    def _spawn(self, process: MonitoredProcess) -> None:
        if accepts_connections(process.host, process.port, timeout=0.5):
            raise ConfigurationError(
                f"port {process.port} on {process.host} ({process.name}) is in use by another "
                "program: recreate the cluster with another --base-port (SAGAZ_DEV_BASE_PORT); "
                f"monitoring uses ports P+{PORT_OFFSET} to P+{HIGHEST_OFFSET}")
        log_path = self.directory / f"{process.name}.log"
        # Only the process's own connection settings: none inherited from the caller's shell.
        env = {**{k: v for k, v in os.environ.items()
                  if not k.startswith(("PG", "DATA_", "SAGAZ_"))}, **process.env}
        with os.fdopen(open_private_append(log_path), "ab") as log:
            child = subprocess.Popen(process.argv, cwd=self.directory, env=env,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     start_new_session=True)
        _children.append(child)
        write_private_file(self._pid_path(process), f"{child.pid}\n")
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(process):
            if child.poll() is not None or time.monotonic() > deadline:
                self._stop(process)
                raise SagazError(f"{process.name} did not start on {process.address}; see "
                                 f"{log_path}:\n{_tail(log_path)}")
            time.sleep(0.1)

    def stop(self) -> list[str]:
        """Stop every process (SIGTERM, SIGKILL after 10 s); the names that were running."""
        if not self.directory.exists():
            return []
        stopped = []
        for process in self.processes():
            if self._stop(process):
                stopped.append(process.name)
        return stopped

    def _stop(self, process: MonitoredProcess, timeout: float = 10.0) -> bool:
        pid = self.pid(process)
        self._pid_path(process).unlink(missing_ok=True)
        if pid is None:
            return False
        terminate(pid, _alive, timeout, poll=0.05)
        _children[:] = [c for c in _children if c.poll() is None]
        return True


# Popen objects of processes this process started: polled so that none stays a zombie.
_children: list[subprocess.Popen[bytes]] = []


def _alive(pid: int) -> bool:
    for child in _children:
        if child.pid == pid:
            return child.poll() is None
    return process_alive(pid)


def _answers(process: MonitoredProcess) -> bool:
    try:
        with urllib.request.urlopen(f"http://{process.address}{process.ready_path}",
                                    timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_monitoring(cluster: LocalCluster) -> list[str]:
    """Stop the cluster's monitoring processes (``dev down``); the names that were running."""
    if not (cluster.directory / "monitoring").exists():
        return []
    try:
        return LocalMonitoring(cluster).stop()
    except ConfigurationError:
        return []  # the packages were removed: nothing of them can be running
