"""The local cluster with automatic failover (``sagaz dev up --ha --failover``): N etcd members
and N Patroni-managed PostgreSQL nodes, plus the pools of :class:`sagaz.ha.local.LocalCluster`,
which the supervisor keeps on the current leader (pgbouncer-rw) and the healthy replicas
(pgbouncer-ro).

Per node ``nodeI/`` of the cluster directory::

    patroni.yml   rendered from the one template (sagaz.deploy.patroni); passwords: 0600
    data/         PGDATA, created and managed by Patroni (initdb or a base backup of the leader)
    etcd/         the etcd member's data
    patroni.log  etcd.log  postgres.log   (0600)
    patroni.pid  etcd.pid                 (0600)

Addresses and ports (base port P): node i listens on its own address (127.0.0.(i+1) unless given
explicitly) with PostgreSQL on P, Patroni's REST API on P+1002, etcd's client port on P+1003 and
its peer port on P+1004. Every hop is TLS with the cluster CA (:mod:`sagaz.tls`): PostgreSQL
(hostssl only), the REST API (https, basic auth for every change), etcd (https, client and peer
certificates required).

Everything runs as the service user (:mod:`sagaz.ha.osuser`). Each node's processes may run
behind a command prefix (``ip netns exec NAME``) and on addresses of its own:
:meth:`PatroniCluster.new` takes both, so that a node can live in a network namespace of its own.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import secrets
import shutil
import ssl
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sagaz.deploy.patroni import PatroniNode, PatroniSettings, render_patroni_config
from sagaz.deploy.patroni_follow import (
    FollowTargets,
    agreed_view,
    fetch_cluster,
    fetch_views,
    follow_targets,
    ssl_context,
)
from sagaz.errors import ConfigurationError, SagazError
from sagaz.ha.addresses import port_free
from sagaz.ha.daemon import Daemon
from sagaz.ha.local import (
    APP_USER,
    GENERATED_USERS,
    PRIMARY_SETTINGS,
    REPLICATION_USER,
    SUPERUSER,
    ClusterState,
    LocalCluster,
)
from sagaz.ha.osuser import ServiceUser, check_reachable, service_user
from sagaz.ha.postgres import find_bindir
from sagaz.ha.wal_settings import DEFAULT_MAX_SLOT_WAL_KEEP_SIZE, wal_retention_settings
from sagaz.private_files import make_private_dir, write_private_file

__all__ = ["API_USER", "PatroniCluster", "find_etcd", "patroni_command"]

logger = logging.getLogger(__name__)

API_USER = "patroni"
"""The basic-auth user of Patroni's REST API (its password is generated into secrets.json)."""
SCOPE = "sagaz"
RESTART_SETTINGS: dict[str, str] = {
    # A crashed primary restarted in place first fsyncs its whole data directory, file by file
    # (the default): on a loaded machine that took longer than the redo itself. syncfs (Linux)
    # syncs each file system once.
    "recovery_init_sync_method": "syncfs",
    # Checkpoints every 30 s instead of 5 min: fewer dirty buffers for the shutdown checkpoint
    # of a switchover's demotion and less WAL to replay after a crash, for a little more WAL.
    "checkpoint_timeout": "'30s'",
}
"""Settings of a Patroni cluster's nodes that shorten a restart or a demotion."""

API_OFFSET, ETCD_CLIENT_OFFSET, ETCD_PEER_OFFSET = 1002, 1003, 1004
DEFAULT_REVIVE_AFTER = 30.0
"""Seconds a dead etcd member or Patroni stays down before the supervisor restarts it, like a
service manager's restart delay. Longer than the test ttl (20 s): a crashed leader is replaced
first and then rejoins as a replica, instead of coming back in time to keep its leader key."""


def find_etcd() -> str:
    binary = shutil.which("etcd") or "/usr/bin/etcd"
    if not os.path.exists(binary):
        raise ConfigurationError(
            "etcd is not installed (looked on the PATH and at /usr/bin/etcd): install it "
            "(Debian/Ubuntu: apt-get install etcd-server)")
    return binary


def patroni_command(user: ServiceUser) -> tuple[list[str], dict[str, str]]:
    """How the service user runs Patroni: this interpreter when that user can reach it, else the
    system's Python 3 with this interpreter's packages on PYTHONPATH (a virtualenv under a home
    directory the service user may not enter)."""
    spec = importlib.util.find_spec("patroni")
    if spec is None or spec.origin is None:
        raise ConfigurationError(
            "Patroni is not installed: pip install 'sagaz[ha]' (patroni[etcd3] 4.x)")
    packages = str(Path(spec.origin).parent.parent)
    python = os.path.realpath(sys.executable)
    try:
        check_reachable(user, Path(python))
    except ConfigurationError:
        system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
        if not os.path.exists(system):
            raise ConfigurationError(
                f"the OS user {user.name!r} cannot run {python} (a parent directory it may not "
                f"enter) and there is no {system}: install sagaz[ha] into an interpreter that "
                "user can run") from None
        python = system
    try:
        check_reachable(user, Path(packages))
    except ConfigurationError as exc:
        raise ConfigurationError(f"Patroni's packages in {packages}: {exc}") from None
    # -S: not the system's site-packages (their pyOpenSSL does not match this interpreter's
    # cryptography), only this interpreter's packages.
    return [python, "-S", "-m", "patroni"], {"PYTHONPATH": packages}


@dataclass
class PatroniCluster:
    local: LocalCluster

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def new(cls, directory: Path, *, nodes: int = 3, base_port: int = 25432,
            dbname: str = "sagaz", settings: PatroniSettings | None = None,
            hosts: list[str] | None = None, prefixes: dict[str, list[str]] | None = None,
            networks: list[str] | None = None,
            revive_after: float | None = DEFAULT_REVIVE_AFTER) -> PatroniCluster:
        """A new cluster of ``nodes`` nodes (not started). ``hosts``: node i's address (default
        127.0.0.(i+1)); ``prefixes``: a command in front of every process of a node, by node
        name; ``networks``: where PostgreSQL accepts connections from (default loopback);
        ``revive_after``: seconds an etcd member or Patroni may stay dead before the supervisor
        starts it again (None: never)."""
        if not 1 <= nodes <= 9:
            raise ConfigurationError(f"--nodes must be between 1 and 9, not {nodes}")
        if not 1024 <= base_port <= 65535 - ETCD_PEER_OFFSET:
            raise ConfigurationError(
                f"--base-port must be between 1024 and {65535 - ETCD_PEER_OFFSET}")
        if hosts is not None and len(hosts) != nodes:
            raise ConfigurationError(f"{len(hosts)} addresses for {nodes} nodes")
        names = [f"node{i}" for i in range(nodes)]
        settings = settings or PatroniSettings()
        state = ClusterState(base_port, dbname, names, "node0", str(find_bindir()),
                             DEFAULT_MAX_SLOT_WAL_KEEP_SIZE,
                             hosts=dict(zip(names, hosts, strict=True)) if hosts else {},
                             patroni={"settings": asdict(settings),
                                      "prefixes": prefixes or {},
                                      "networks": networks or ["127.0.0.0/8"],
                                      "revive_after": revive_after})
        return cls(LocalCluster(directory.absolute(), state))

    @classmethod
    def load(cls, directory: Path) -> PatroniCluster:
        local = LocalCluster.load(directory)
        if local.state.patroni is None:
            raise ConfigurationError(
                f"the cluster in {local.directory} has no automatic failover (it was made by "
                "`sagaz dev up --ha` without --failover)")
        return cls(local)

    @property
    def state(self) -> ClusterState:
        return self.local.state

    @property
    def layout(self) -> dict[str, Any]:
        assert self.state.patroni is not None
        return self.state.patroni

    @property
    def settings(self) -> PatroniSettings:
        return PatroniSettings(**self.layout["settings"])

    @property
    def directory(self) -> Path:
        return self.local.directory

    # -- addresses -------------------------------------------------------------------------------

    def api_endpoint(self, node: str) -> str:
        return f"{self.state.host(node)}:{self.state.base_port + API_OFFSET}"

    def etcd_client_url(self, node: str) -> str:
        return f"https://{self.state.host(node)}:{self.state.base_port + ETCD_CLIENT_OFFSET}"

    def etcd_peer_url(self, node: str) -> str:
        return f"https://{self.state.host(node)}:{self.state.base_port + ETCD_PEER_OFFSET}"

    def prefix(self, node: str) -> list[str]:
        return list(self.layout.get("prefixes", {}).get(node, []))

    # -- connection strings ----------------------------------------------------------------------

    def multihost_dsn(self, *, user: str = APP_USER, **extra: Any) -> str:
        """A libpq conninfo naming every node, that connects to whichever accepts writes
        (``target_session_attrs=read-write``): failover without a pool in between."""
        from psycopg.conninfo import make_conninfo

        s = self.state
        return make_conninfo(
            "", host=",".join(s.host(n) for n in s.nodes),
            port=",".join(str(s.port(n)) for n in s.nodes), user=user,
            password=self.local.passwords[user], dbname=s.dbname,
            **{"target_session_attrs": "read-write", "connect_timeout": 3,
               **self.local.tls.client_params(), **extra})

    def multihost_url(self, *, user: str = APP_USER) -> str:
        """:meth:`multihost_dsn` as a ``postgresql://`` URL (what SAGAZ_* variables take)."""
        from urllib.parse import quote, urlencode

        s, pw = self.state, self.local.passwords
        hosts = ",".join(f"{s.host(n)}:{s.port(n)}" for n in s.nodes)
        query = urlencode({"target_session_attrs": "read-write", "connect_timeout": "3",
                           **self.local.tls.client_params()}, safe="/")
        return (f"postgresql://{quote(user, safe='')}:{quote(pw[user], safe='')}@{hosts}/"
                f"{quote(s.dbname, safe='')}?{query}")

    def env(self) -> dict[str, str]:
        """The variables of :meth:`LocalCluster.env`, but SAGAZ_DATABASE_URL (migrations,
        LISTEN) is the multi-host URL: it reaches the leader wherever it is now."""
        return {**self.local.env(), "SAGAZ_DATABASE_URL": self.multihost_url()}

    # -- processes -------------------------------------------------------------------------------

    def node_dir(self, node: str) -> Path:
        return self.directory / node

    def etcd(self, node: str) -> Daemon:
        tls = self.local.tls
        peers = ",".join(f"{n}={self.etcd_peer_url(n)}" for n in self.state.nodes)
        command = [
            find_etcd(), "--name", node, "--data-dir", str(self.node_dir(node) / "etcd"),
            "--listen-client-urls", self.etcd_client_url(node),
            "--advertise-client-urls", self.etcd_client_url(node),
            "--listen-peer-urls", self.etcd_peer_url(node),
            "--initial-advertise-peer-urls", self.etcd_peer_url(node),
            "--initial-cluster", peers, "--initial-cluster-state", "new",
            "--initial-cluster-token", f"{SCOPE}-{self.state.base_port}",
            # Clients and peers alike must show a certificate of the cluster CA.
            "--cert-file", str(tls.server_cert), "--key-file", str(tls.server_key),
            "--trusted-ca-file", str(tls.ca_cert), "--client-cert-auth",
            "--peer-cert-file", str(tls.server_cert), "--peer-key-file", str(tls.server_key),
            "--peer-trusted-ca-file", str(tls.ca_cert), "--peer-client-cert-auth",
            "--logger", "zap", "--log-outputs", "stderr"]
        d = self.node_dir(node)
        return Daemon(f"etcd {node}", command, d / "etcd.pid", d / "etcd.log",
                      prefix=self.prefix(node), cwd=d)

    def patroni(self, node: str) -> Daemon:
        command, env = patroni_command(service_user())
        d = self.node_dir(node)
        return Daemon(f"patroni {node}", [*command, str(d / "patroni.yml")], d / "patroni.pid",
                      d / "patroni.log", prefix=self.prefix(node), env=env, cwd=d)

    def patroni_config(self, node: str) -> str:
        s, tls, pw = self.state, self.local.tls, self.local.passwords
        d = self.node_dir(node)
        host = s.host(node)
        spec = PatroniNode(
            name=node, scope=SCOPE,
            restapi_listen=self.api_endpoint(node), restapi_connect=self.api_endpoint(node),
            pg_listen=f"{host}:{s.base_port}", pg_connect=f"{host}:{s.base_port}",
            data_dir=str(d / "data"), pgpass=str(d / ".pgpass-patroni"),
            bin_dir=s.bindir,
            etcd_hosts=[f"{s.host(n)}:{s.base_port + ETCD_CLIENT_OFFSET}" for n in s.nodes],
            tls_cert=str(tls.server_cert), tls_key=str(tls.server_key), tls_ca=str(tls.ca_cert),
            restapi_user=API_USER, restapi_password=pw[API_USER],
            superuser=SUPERUSER, superuser_password=pw[SUPERUSER],
            replication_user=REPLICATION_USER, replication_password=pw[REPLICATION_USER],
            networks=list(self.layout.get("networks", ["127.0.0.0/8"])),
            node_parameters={
                "unix_socket_directories": str(d),
                "ssl": "on", "ssl_cert_file": str(tls.server_cert),
                "ssl_key_file": str(tls.server_key), "ssl_min_protocol_version": "TLSv1.2",
                "logging_collector": "on", "log_directory": str(d),
                "log_filename": "postgres.log", "log_file_mode": "0600"})
        return render_patroni_config(
            spec, self.settings,
            {**PRIMARY_SETTINGS, **RESTART_SETTINGS,
             **wal_retention_settings(s.max_slot_wal_keep_size)})

    # -- lifecycle -------------------------------------------------------------------------------

    def preflight(self) -> None:
        find_etcd()
        patroni_command(service_user())
        s = self.state
        self.local.preflight(frozenset(n for n in s.nodes if self.prefix(n)))
        for node in s.nodes:
            for port, what, daemon in (
                    (s.base_port + API_OFFSET, "Patroni REST API", self.patroni(node)),
                    (s.base_port + ETCD_CLIENT_OFFSET, "etcd client port", self.etcd(node)),
                    (s.base_port + ETCD_PEER_OFFSET, "etcd peer port", self.etcd(node))):
                if self.prefix(node) or daemon.running:
                    continue  # in a namespace of its own: not visible from here
                if not port_free(s.host(node), port):
                    raise ConfigurationError(
                        f"port {port} on {s.host(node)} ({what} of {node}) is in use by another "
                        "program: choose other ports with --base-port (SAGAZ_DEV_BASE_PORT)")

    def up(self, progress: Callable[[str], None] = lambda _: None,
           timeout: float = 180.0) -> None:
        """Create what is missing and start what is stopped, then wait until a leader serves and
        every replica streams; idempotent."""
        local, user = self.local, service_user()
        self.preflight()
        for name in (*GENERATED_USERS, API_USER):
            local.passwords.setdefault(name, secrets.token_urlsafe(24))
        local.save()
        local.ensure_tls()
        user.own(self.directory)
        for node in self.state.nodes:
            make_private_dir(self.node_dir(node))
            write_private_file(self.node_dir(node) / "patroni.yml", self.patroni_config(node))
            user.own(self.node_dir(node))
        progress(f"etcd: {len(self.state.nodes)} member(s)")
        for node in self.state.nodes:
            self.etcd(node).start()
        self.wait_for(lambda: all(self.etcd_health(n) is True for n in self.state.nodes),
                      timeout, "etcd to form a cluster", self._etcd_logs)
        fresh = not (self.node_dir(self.state.nodes[0]) / "data" / "PG_VERSION").exists()
        first, *others = self.state.nodes
        progress(f"Patroni {first}" + (" (initdb, the first leader)" if fresh else ""))
        self.patroni(first).start()
        if fresh:
            # The first node bootstraps alone: the others then clone it instead of racing it.
            self.wait_for(lambda: self._bootstrapped(first), timeout,
                          f"{first} to bootstrap the cluster", lambda: self._patroni_logs([first]))
        for node in others:
            self.patroni(node).start()
        progress("waiting for a leader")
        leader = self.wait_for(self.leader, timeout, "a leader", self._patroni_logs)
        self.state.primary = leader
        local.save()
        progress(f"roles and database on the leader {leader} (sql/roles.sql)")
        local.run_roles_sql()
        progress("schema and partitions (migrations)")
        local.migrate()
        progress("replicas (Patroni clones them from the leader)")
        self.wait_for(self._all_serving, timeout, "every replica to stream",
                      self._patroni_logs)
        self.follow()
        for role in ("rw", "ro"):
            bouncer = self._bouncer(role)
            if bouncer.pid is None:
                progress(f"starting pgbouncer-{role} (port {bouncer.port})")
                bouncer.start()

    def down(self, purge: bool = False) -> None:
        """Stop the supervisor, the pools, every Patroni (the leader last: no failover on the
        way out; each stops its PostgreSQL) and every etcd member; ``purge`` deletes the
        directory, data, etcd data and passwords included."""
        from sagaz.ha.supervisor import stop_supervisor

        stop_supervisor(self.local)
        for role in ("ro", "rw"):
            self.local.bouncer(role).stop()
        order = sorted(self.state.nodes, key=lambda n: n == self.state.primary)
        for node in order:
            self.patroni(node).stop(timeout=60)
            postgres = self.local.node(node)
            if postgres.running:  # Patroni was killed before it could stop it
                postgres.stop("immediate")
        for node in self.state.nodes:
            self.etcd(node).stop()
        if purge:
            shutil.rmtree(self.directory, ignore_errors=True)

    def running_parts(self) -> list[str]:
        parts = [f"etcd {n}" for n in self.state.nodes if self.etcd(n).running]
        parts += [f"patroni {n}" for n in self.state.nodes if self.patroni(n).running]
        parts += [n for n in self.state.nodes if self.local.node(n).running]
        parts += [f"pgbouncer-{r}" for r in ("rw", "ro") if self.local.bouncer(r).pid]
        return parts

    def stopped_parts(self) -> list[str]:
        parts = [f"etcd {n}" for n in self.state.nodes if not self.etcd(n).running]
        parts += [f"patroni {n}" for n in self.state.nodes if not self.patroni(n).running]
        parts += [f"pgbouncer-{r}" for r in ("rw", "ro") if not self.local.bouncer(r).pid]
        return parts

    # -- following the leader --------------------------------------------------------------------

    def api_context(self) -> ssl.SSLContext:
        return ssl_context(str(self.local.tls.ca_cert))

    def cluster_document(self, timeout: float = 1.0) -> dict[str, Any] | None:
        """Patroni's ``GET /cluster`` from the first member that answers."""
        return fetch_cluster([self.api_endpoint(n) for n in self.state.nodes],
                             self.api_context(), timeout)

    def targets(self) -> FollowTargets | None:
        """Where the pools belong, as a majority of the members sees it (None: no majority
        names a leader)."""
        views = fetch_views([self.api_endpoint(n) for n in self.state.nodes],
                            self.api_context())
        document = agreed_view(views, len(self.state.nodes))
        return None if document is None else follow_targets(document)

    def leader(self) -> str | None:
        targets = self.targets()
        return targets.leader if targets else None

    def _bootstrapped(self, node: str) -> bool:
        """Whether ``node`` runs as the leader (by its own word: the only member yet)."""
        document = fetch_cluster([self.api_endpoint(node)], self.api_context())
        return bool(document and follow_targets(document).leader == node)

    def _all_serving(self) -> bool:
        targets = self.targets()
        return bool(targets and targets.leader
                    and len(targets.replicas) == len(self.state.nodes) - 1)

    def _bouncer(self, role: str) -> Any:
        return self.local.bouncer(role, self._pool_nodes(role, self.targets()))

    def _pool_nodes(self, role: str, targets: FollowTargets | None) -> list[str]:
        if targets is None or targets.leader is None:
            return [self.state.primary] if role == "rw" else \
                self.configured_pool_nodes(role) or [self.state.primary]
        if role == "rw":
            return [targets.leader]
        return targets.replicas or [targets.leader]

    def configured_pool_nodes(self, role: str) -> list[str]:
        by_host = {self.state.host(n): n for n in self.state.nodes}
        hosts = self.local.bouncer(role).configured_hosts(self.state.dbname)
        return [by_host[h] for h in hosts if h in by_host]

    def revive(self, dead_since: dict[str, float],
               now: Callable[[], float] = time.monotonic) -> list[str]:
        """Start again the etcd members and Patroni processes that died (they ran: their pid
        file is there) once they have been dead for ``revive_after`` seconds; ``dead_since``
        remembers, across passes, since when. A stopped process (SIGSTOP) is alive. Returns what
        was started. Patroni then brings its PostgreSQL back, as a replica if another node
        leads meanwhile (pg_rewind)."""
        delay = self.layout.get("revive_after", DEFAULT_REVIVE_AFTER)
        if delay is None:
            return []
        started = []
        for daemon in [d(n) for n in self.state.nodes for d in (self.etcd, self.patroni)]:
            if not daemon.pid_path.exists() or daemon.running:
                dead_since.pop(daemon.name, None)
                continue
            since = dead_since.setdefault(daemon.name, now())
            if now() - since >= delay:
                daemon.start()
                dead_since.pop(daemon.name, None)
                started.append(daemon.name)
                logger.warning("%s had died: started it again", daemon.name,
                               extra={"action": "daemon_revived", "daemon": daemon.name})
        return started

    def follow(self) -> dict[str, tuple[list[str], list[str]]]:
        """One pass of the supervisor: point pgbouncer-rw at the leader and pgbouncer-ro at the
        replicas that stream, RELOADing a pool whose targets changed; record the leader as
        ``primary`` in cluster.json. Nothing changes while no leader is known (an election):
        the pools keep their targets. Returns the changes, by pool: (before, after)."""
        targets = self.targets()
        changes: dict[str, tuple[list[str], list[str]]] = {}
        if targets is None or targets.leader is None:
            return changes
        if targets.leader != self.state.primary:
            logger.warning("the leader is now %s (was %s)", targets.leader, self.state.primary,
                           extra={"action": "leader_changed", "leader": targets.leader,
                                  "before": self.state.primary})
            self.state.primary = targets.leader
            self.local.save()
        for role in ("rw", "ro"):
            after = self._pool_nodes(role, targets)
            before = self.configured_pool_nodes(role)
            if before == after:
                continue
            bouncer = self.local.bouncer(role, after)
            if bouncer.pid is not None:
                bouncer.reload()
            changes[role] = (before, after)
            logger.info("pgbouncer-%s now on %s (was %s)", role, ",".join(after),
                        ",".join(before) or "-",
                        extra={"action": "pool_followed", "pool": role, "after": after,
                               "before": before})
        return changes

    # -- health ----------------------------------------------------------------------------------

    def etcd_health(self, node: str, timeout: float = 1.0) -> bool | str:
        """True when the member answers healthy, else why not."""
        tls = self.local.tls
        context = ssl_context(str(tls.ca_cert), str(tls.server_cert), str(tls.server_key))
        try:
            with urllib.request.urlopen(f"{self.etcd_client_url(node)}/health",
                                        timeout=timeout, context=context) as response:
                body = json.load(response)
        except (OSError, ValueError) as exc:
            return " ".join(str(exc).split()) or type(exc).__name__
        return True if str(body.get("health")) == "true" else json.dumps(body)

    def wait_for(self, condition: Callable[[], Any], timeout: float, what: str,
                 logs: Callable[[], str] = lambda: "") -> Any:
        """``condition()`` once it is true; an error with ``logs()`` after ``timeout`` seconds
        or as soon as a daemon of the cluster died."""
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if result:
                return result
            dead = self._dead_daemons()
            if dead:
                raise SagazError(f"{', '.join(dead)} exited while waiting for {what}\n{logs()}")
            if time.monotonic() > deadline:
                raise SagazError(f"timed out after {timeout:g} s waiting for {what}\n{logs()}")
            time.sleep(0.2)

    def _dead_daemons(self) -> list[str]:
        """Daemons that were started (their pid file is there) but no longer run."""
        daemons = [d(n) for n in self.state.nodes for d in (self.etcd, self.patroni)]
        return [d.name for d in daemons if d.pid_path.exists() and not d.running]

    def _etcd_logs(self) -> str:
        return "\n".join(f"{n}/etcd.log:\n{_tail(self.node_dir(n) / 'etcd.log')}"
                         for n in self.state.nodes)

    def _patroni_logs(self, nodes: list[str] | None = None) -> str:
        return "\n".join(f"{n}/patroni.log:\n{_tail(self.node_dir(n) / 'patroni.log')}"
                         for n in nodes or self.state.nodes)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
