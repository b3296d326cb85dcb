"""The docker-less local HA cluster: a primary, N streaming replicas, pgbouncer-rw (transaction
pooling to the primary) and pgbouncer-ro (the replicas), on loopback, from the machine's
PostgreSQL and PgBouncer binaries.

Layout of the cluster directory (default ``.sagaz/cluster``)::

    cluster.json     ports, nodes, which node is the primary (no secrets)
    secrets.json     generated passwords, mode 0600
    tls/             the cluster CA and the server certificate (sagaz.tls; 0700, keys 0600)
    node0/ node1/    one PostgreSQL server each (data/, postgres.log, socket)
    pgbouncer-rw/ pgbouncer-ro/

Addresses: node i listens on 127.0.0.(i+1), every node on port P (``base_port``), so that
pgbouncer-ro can balance over the replicas with one host list and one port, as PgBouncer 1.18
requires. pgbouncer-rw listens on 127.0.0.1:P+1000 and pgbouncer-ro on 127.0.0.1:P+1001 (the
deployment's 5432/6432/6433 shifted, so a system PostgreSQL can keep its ports).

Every TCP connection is TLS, verified (``sslmode=verify-full`` against ``tls/ca.crt``): the
servers accept nothing else, the pools require it from clients and use it to the servers, and
every conninfo this class hands out asks for it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

# psycopg is imported where a connection string is built, not here: `sagaz init` imports this
# module for its names and settings and must work without a database driver.
from sagaz.errors import ConfigurationError, SagazError
from sagaz.ha.addresses import conninfo_url, port_free
from sagaz.ha.archive_settings import (
    DEFAULT_ARCHIVE_TIMEOUT,
    DEFAULT_RETENTION_FULL,
    archive_settings,
    find_pgbackrest,
)
from sagaz.ha.osuser import check_reachable, service_user
from sagaz.ha.pgbouncer import READ_POOL, WRITE_POOL, Backend, PgBouncer, find_pgbouncer
from sagaz.ha.postgres import PostgresNode, find_bindir
from sagaz.ha.wal_settings import (
    DEFAULT_MAX_SLOT_WAL_KEEP_SIZE,
    normalize_wal_size,
    wal_retention_settings,
)
from sagaz.private_files import make_private_dir, write_private_file
from sagaz.tls import TlsFiles, ensure_certificates

__all__ = ["ClusterState", "LocalCluster", "PRIMARY_SETTINGS"]

SUPERUSER = "postgres"
APP_USER = "sagaz"
READER_USER = "sagaz_reader"
REPLICATION_USER = "replicator"
PGBOUNCER_ADMIN = "pgbouncer_admin"
"""PgBouncer's admin console (PAUSE, RESUME, RELOAD): failover. Known only to PgBouncer's auth
file, not to PostgreSQL: its password opens no database."""
PGBOUNCER_STATS = "pgbouncer_stats"
"""PgBouncer's console, read-only (SHOW POOLS, STATS, DATABASES): health, status, exporters.
Known only to PgBouncer's auth file, like PGBOUNCER_ADMIN."""
MONITOR_USER = "sagaz_monitor"
"""postgres_exporter's role: pg_monitor, the maintenance database only (sql/roles.sql)."""
GENERATED_USERS = (SUPERUSER, APP_USER, READER_USER, REPLICATION_USER, PGBOUNCER_ADMIN,
                   PGBOUNCER_STATS, MONITOR_USER)
"""Every user with a generated password in secrets.json."""
POOL_USERS = (APP_USER, READER_USER, PGBOUNCER_ADMIN, PGBOUNCER_STATS)
"""The users the pools accept: neither the superuser nor the replication user goes through a
pool."""

PRIMARY_SETTINGS: dict[str, str] = {
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "hot_standby": "on",
    # Replicas report the oldest snapshot they need, so long analytics queries are not cancelled
    # by the primary's vacuum (at the price of some bloat while they run).
    "hot_standby_feedback": "on",
    "password_encryption": "'scram-sha-256'",
    "max_connections": "200",
    "shared_buffers": "'128MB'",
    # Lag measurements and failover drills want replicas to apply WAL without delay.
    "max_standby_streaming_delay": "'5s'",
    "wal_receiver_status_interval": "'1s'",
    "log_line_prefix": "'%m [%p] %u@%d '",
}
"""Every node gets these (a replica may become the primary), and the WAL retention of
:func:`sagaz.ha.wal_settings.wal_retention_settings` (max_slot_wal_keep_size, wal_keep_size)."""


@dataclass
class ClusterState:
    """What ``cluster.json`` records: enough to find and drive a running cluster."""

    base_port: int
    dbname: str
    nodes: list[str]
    primary: str
    bindir: str
    max_slot_wal_keep_size: str = DEFAULT_MAX_SLOT_WAL_KEEP_SIZE
    """How far a replica may fall behind before the primary gives its slot up (see
    :mod:`sagaz.ha.wal_settings`)."""
    backup: bool = False
    """WAL archiving and backups through pgBackRest (``sagaz dev up --backup``)."""
    archive_timeout: int = DEFAULT_ARCHIVE_TIMEOUT
    retention_full: int = DEFAULT_RETENTION_FULL
    monitoring: bool = False
    """Prometheus and the exporters run with the cluster (``sagaz dev up --monitoring``, see
    :mod:`sagaz.ha.monitoring`)."""
    hosts: dict[str, str] = field(default_factory=dict)
    """Addresses given explicitly (a node in a network namespace of its own); a node missing
    here listens on its loopback address 127.0.0.(i+1)."""
    patroni: dict[str, Any] | None = None
    """Set for a cluster whose roles Patroni manages (``dev up --ha --failover``): its settings,
    node command prefixes and networks (see :mod:`sagaz.ha.patroni_cluster`). ``primary`` is
    then the leader the pools were last pointed at, which the supervisor keeps following."""

    def port(self, node: str) -> int:
        return self.base_port

    def host(self, node: str) -> str:
        return self.hosts.get(node) or f"127.0.0.{int(node.removeprefix('node')) + 1}"

    @property
    def rw_port(self) -> int:
        return self.base_port + 1000

    @property
    def ro_port(self) -> int:
        return self.base_port + 1001

    @property
    def replicas(self) -> list[str]:
        return [n for n in self.nodes if n != self.primary]


@dataclass
class LocalCluster:
    directory: Path
    state: ClusterState
    passwords: dict[str, str] = field(default_factory=dict)

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def new(cls, directory: Path, *, replicas: int = 1, base_port: int = 25432,
            dbname: str = "sagaz",
            max_slot_wal_keep_size: str = DEFAULT_MAX_SLOT_WAL_KEEP_SIZE) -> LocalCluster:
        if replicas < 0:
            raise ConfigurationError(f"--replicas must be 0 or more, not {replicas}")
        if not 1024 <= base_port <= 65535 - 1001 or replicas > 200:
            raise ConfigurationError(f"--base-port must be between 1024 and {65535 - 1001}, "
                             "--replicas at most 200")
        nodes = [f"node{i}" for i in range(replicas + 1)]
        state = ClusterState(base_port, dbname, nodes, "node0", str(find_bindir()),
                             normalize_wal_size(max_slot_wal_keep_size))
        return cls(directory.absolute(), state)

    @classmethod
    def load(cls, directory: Path) -> LocalCluster:
        directory = directory.absolute()
        try:
            state = ClusterState(**json.loads((directory / "cluster.json").read_text()))
            passwords = json.loads((directory / "secrets.json").read_text())
        except FileNotFoundError:
            raise ConfigurationError(
                f"no local cluster in {directory}: start one with `sagaz dev up --ha`") from None
        return cls(directory, state, passwords)

    def save(self) -> None:
        """Write cluster.json and secrets.json (0600, in a 0700 directory), each atomically: the
        supervisor reads cluster.json every second and must never see half a file."""
        make_private_dir(self.directory)
        write_private_file(self.directory / "cluster.json",
                           json.dumps(asdict(self.state), indent=2), atomic=True)
        self.save_passwords()

    def save_passwords(self) -> None:
        write_private_file(self.directory / "secrets.json", json.dumps(self.passwords, indent=2),
                           atomic=True)

    def private_files(self) -> list[Path]:
        """The directory and the files of it that hold secrets or state, those that exist:
        passwords, layout, the supervisor's log and pid, the pools' configs and auth files."""
        d = self.directory
        candidates = [d, d / "cluster.json", d / "secrets.json", d / "supervisor.log",
                      d / "supervisor.pid", d / ".secrets-rotating.json"]  # sagaz.ha.rotation
        for role in ("rw", "ro"):
            pool = d / f"pgbouncer-{role}"
            candidates += [pool / "userlist.txt", pool / "pgbouncer.ini", pool / "pgbouncer.log"]
        for node in self.state.nodes if self.state.patroni is not None else []:
            # sagaz.ha.patroni_cluster: Patroni's config holds every password of the node.
            candidates += [d / node / name for name in
                           ("patroni.yml", "patroni.log", "etcd.log", "patroni.pid", "etcd.pid")]
        from sagaz.ha.monitoring import LocalMonitoring

        candidates += LocalMonitoring(self).private_files()
        return [path for path in candidates if path.exists()]

    # -- parts -----------------------------------------------------------------------------------

    def node(self, name: str) -> PostgresNode:
        # cluster_name names the processes in ps and is the application_name a standby reports
        # to its primary (pg_stat_replication), so status can tell the replicas apart.
        return PostgresNode(name, self.directory / name, self.state.port(name), tls=self.tls,
                            host=self.state.host(name), bindir=Path(self.state.bindir),
                            settings={**PRIMARY_SETTINGS,
                                      **wal_retention_settings(self.state.max_slot_wal_keep_size),
                                      **self.archive_settings(name),
                                      "cluster_name": f"'{name}'"})

    @property
    def backup_dir(self) -> Path:
        """pgBackRest's configuration, repository, spool and logs (see :mod:`sagaz.ha.backup`)."""
        return self.directory / "backup"

    def archive_settings(self, name: str) -> dict[str, str]:
        """Node ``name``'s WAL archiving settings: none unless backups are on."""
        if not self.state.backup:
            return {}
        return archive_settings(str(self.backup_dir / "pgbackrest.conf"),
                                str(self.directory / name / "data"),
                                str(self.backup_dir / "spool" / name), self.state.archive_timeout)

    @property
    def primary(self) -> PostgresNode:
        return self.node(self.state.primary)

    @property
    def replicas(self) -> list[PostgresNode]:
        return [self.node(n) for n in self.state.replicas]

    def bouncer(self, role: str, targets: list[str] | None = None) -> PgBouncer:
        """pgbouncer-rw (to the primary) or pgbouncer-ro (to the replicas; to the primary when
        there is none); ``targets`` (node names) overrides where it points."""
        s = self.state
        if targets is None:
            targets = [s.primary] if role == "rw" else self.live_replicas() or [s.primary]
        return PgBouncer(
            self.directory / f"pgbouncer-{role}", port=s.rw_port if role == "rw" else s.ro_port,
            backends=self.backends(targets), admin_user=PGBOUNCER_ADMIN,
            stats_user=PGBOUNCER_STATS, role=role, tls=self.tls,
            settings=WRITE_POOL if role == "rw" else READ_POOL,
            passwords={u: self.passwords[u] for u in POOL_USERS if u in self.passwords})

    def backends(self, targets: list[str]) -> list[Backend]:
        """The [databases] entries of a pool over the nodes ``targets``."""
        s = self.state
        # PgBouncer opens each new server connection to the next host of the list.
        hosts = ",".join(s.host(n) for n in targets)
        return [Backend(s.dbname, hosts, s.base_port, s.dbname)]

    def live_replicas(self) -> list[str]:
        return [n for n in self.state.replicas if self.node(n).running]

    def node_named(self, name: str) -> PostgresNode:
        """The node ``name``, or a usage error listing the nodes there are."""
        if name not in self.state.nodes:
            raise ConfigurationError(
                f"no node {name!r} in the cluster in {self.directory}; its nodes are "
                f"{', '.join(self.state.nodes)} (primary {self.state.primary})")
        return self.node(name)

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(self.directory / "tls")

    def tls_names(self) -> list[str]:
        """What clients connect to: every node's address, the pools' 127.0.0.1, localhost."""
        return ["127.0.0.1", "localhost", *(self.state.host(n) for n in self.state.nodes)]

    def ensure_tls(self) -> None:
        """The cluster CA and server certificate, made when missing or expiring (idempotent),
        handed to the service user: PostgreSQL and PgBouncer read the key as that user."""
        ensure_certificates(self.tls.directory, self.tls_names())
        service_user().own(self.tls.directory)

    @property
    def supervisor_pid_path(self) -> Path:
        return self.directory / "supervisor.pid"

    # -- state -----------------------------------------------------------------------------------

    def stopped_parts(self) -> list[str]:
        """What ``up`` would have to create or start: empty when the cluster is fully up."""
        if self.state.patroni is not None:
            from sagaz.ha.patroni_cluster import PatroniCluster

            return PatroniCluster(self).stopped_parts()
        missing = [n for n in self.state.nodes if not self.node(n).running]
        missing += [f"pgbouncer-{r}" for r in ("rw", "ro") if self.bouncer(r).pid is None]
        return missing

    def missing_users(self) -> list[str]:
        """Users without a password in secrets.json: a cluster made by an earlier sagaz, whose
        roles and pools ``up`` brings up to date."""
        return [u for u in GENERATED_USERS if u not in self.passwords]

    def running_parts(self) -> list[str]:
        if self.state.patroni is not None:
            from sagaz.ha.patroni_cluster import PatroniCluster

            return PatroniCluster(self).running_parts()
        running = [n for n in self.state.nodes if self.node(n).running]
        running += [f"pgbouncer-{r}" for r in ("rw", "ro") if self.bouncer(r).pid is not None]
        return running

    def preflight(self, elsewhere: frozenset[str] = frozenset()) -> None:
        """Fail before anything is created or started when this machine cannot run the cluster:
        missing binaries, a directory the service user cannot reach, a port another program
        holds. Each error says what to change. ``elsewhere``: nodes whose ports are not visible
        from here (a network namespace of their own)."""
        bindir = Path(self.state.bindir)
        for tool in ("initdb", "postgres", "pg_ctl", "pg_basebackup", "pg_rewind", "psql"):
            if not (bindir / tool).exists():
                raise ConfigurationError(
                    f"{bindir / tool} is missing: install the PostgreSQL server binaries "
                    "(Debian/Ubuntu: apt-get install postgresql-15) or set SAGAZ_PG_BINDIR to the "
                    "directory holding initdb, pg_ctl and postgres")
        find_pgbouncer()
        if self.state.backup:
            find_pgbackrest()
        check_reachable(service_user(), self.directory)
        hidden = {self.state.host(n) for n in elsewhere}
        for host, port, what, running in self._listeners():
            if not running and host not in hidden and not port_free(host, port):
                raise ConfigurationError(
                    f"port {port} on {host} ({what}) is in use by another program (another "
                    f"cluster, a system PostgreSQL?): choose other ports with --base-port "
                    f"(SAGAZ_DEV_BASE_PORT). This cluster needs port {self.state.base_port} on "
                    f"127.0.0.1..{self.state.host(self.state.nodes[-1])} for its servers and "
                    f"{self.state.rw_port}, {self.state.ro_port} on 127.0.0.1 for pgbouncer-rw "
                    "and pgbouncer-ro")

    def _listeners(self) -> list[tuple[str, int, str, bool]]:
        s = self.state
        found = [(s.host(n), s.port(n), f"PostgreSQL {n}", self.node(n).running)
                 for n in s.nodes]
        for role in ("rw", "ro"):
            bouncer = self.bouncer(role, [s.primary])
            found.append((bouncer.listen_addr, bouncer.port, f"pgbouncer-{role}",
                          bouncer.pid is not None))
        return found

    # -- connection strings ----------------------------------------------------------------------

    # Every conninfo verifies the server (TLS, sslmode=verify-full against the cluster CA);
    # ``extra`` may override that (the tests that prove a plaintext connection is refused).

    def dsn(self, *, user: str = APP_USER, port: int | None = None, dbname: str | None = None,
            **extra: Any) -> str:
        """A conninfo to a pool (``port``: rw_port or ro_port) or, by default, straight to the
        primary."""
        from psycopg.conninfo import make_conninfo
        return make_conninfo(
            "", host="127.0.0.1" if port else self.state.host(self.state.primary),
            port=port or self.state.base_port,
            user=user, password=self.passwords[user], dbname=dbname or self.state.dbname,
            **{**self.tls.client_params(), **extra})

    def node_dsn(self, node: str, *, user: str = SUPERUSER, dbname: str = "postgres",
                 **extra: Any) -> str:
        """A conninfo straight to one node (default: the superuser, maintenance database)."""
        from psycopg.conninfo import make_conninfo
        return make_conninfo(
            "", host=self.state.host(node), port=self.state.port(node), user=user,
            password=self.passwords[user], dbname=dbname,
            **{**self.tls.client_params(), **extra})

    def admin_dsn(self, role: str, **extra: Any) -> str:
        """A conninfo to the admin console of pgbouncer-``role`` (PAUSE, RESUME, RELOAD)."""
        return self._console_dsn(role, PGBOUNCER_ADMIN, **extra)

    def stats_dsn(self, role: str, **extra: Any) -> str:
        """A conninfo to the console of pgbouncer-``role`` that may only SHOW (pools, stats)."""
        return self._console_dsn(role, PGBOUNCER_STATS, **extra)

    def _console_dsn(self, role: str, user: str, **extra: Any) -> str:
        if user not in self.passwords:
            raise ConfigurationError(
                f"{self.directory / 'secrets.json'} has no password for {user} (a cluster made "
                "by an earlier sagaz): run `sagaz dev up` to add it")
        from psycopg.conninfo import make_conninfo
        return make_conninfo(
            "", host="127.0.0.1",
            port=self.state.rw_port if role == "rw" else self.state.ro_port,
            user=user, password=self.passwords[user], dbname="pgbouncer",
            **{**self.tls.client_params(), **extra})

    def env(self) -> dict[str, str]:
        """The variables an application of this cluster sets (URLs that verify the server:
        ``sslmode=verify-full&sslrootcert=`` the cluster CA)."""
        rw = self.dsn(port=self.state.rw_port)
        ro = self.dsn(user=READER_USER, port=self.state.ro_port)
        direct = self.dsn()
        return {"SAGAZ_STORAGE_URL": conninfo_url(rw), "SAGAZ_ANALYTICS_URL": conninfo_url(ro),
                "SAGAZ_DATABASE_URL": conninfo_url(direct)}

    # -- lifecycle -------------------------------------------------------------------------------

    def up(self, progress: Callable[[str], None] = lambda _: None) -> None:
        """Create what is missing and start what is stopped; idempotent."""
        self.preflight()
        # Also for a cluster created before a user was added (the PgBouncer console users).
        for user in GENERATED_USERS:
            self.passwords.setdefault(user, secrets.token_urlsafe(24))
        self.save()
        check_reachable(service_user(), self.directory)
        self.ensure_tls()
        service_user().own(self.directory)
        primary = self.primary
        if not primary.exists:
            progress(f"initdb {primary.name} (primary, port {primary.port})")
            primary.init_primary(SUPERUSER, self.passwords[SUPERUSER])
        if not primary.running:
            progress(f"starting {primary.name}")
            primary.write_settings()
            primary.start()
        else:
            self._reload_settings(primary)
        progress("roles and database (sql/roles.sql)")
        self.run_roles_sql()
        progress("schema and partitions (migrations)")
        self.migrate()
        for replica in self.replicas:
            if replica.exists and not replica.running and self.slot_status(replica.name) == "lost":
                # The primary gave this replica's WAL up: no restart can make it stream again.
                progress(f"{replica.name} fell more than max_slot_wal_keep_size "
                         f"({self.state.max_slot_wal_keep_size}) behind and its slot was lost: "
                         "cloning it again")
                self.drop_slot(replica.name)
                replica.purge()
            if not replica.exists:
                progress(f"pg_basebackup {replica.name} (replica, port {replica.port})")
                replica.init_replica(primary, REPLICATION_USER,
                                     self.passwords[REPLICATION_USER], slot=replica.name,
                                     create_slot=self.slot_status(replica.name) is None)
            if not replica.running:
                progress(f"starting {replica.name}")
                replica.write_settings()
                replica.start()
            else:
                self._reload_settings(replica)
        for role in ("rw", "ro"):
            bouncer = self.bouncer(role)
            if bouncer.pid is None:
                progress(f"starting pgbouncer-{role} (port {bouncer.port})")
                bouncer.start()
            else:
                bouncer.reload()

    def _reload_settings(self, node: PostgresNode) -> None:
        """A running node re-reads its settings, pg_hba.conf and certificates (a renewed
        certificate, or TLS turned on in a cluster made by an older sagaz) and is waited for:
        the next step connects over TLS."""
        node.write_settings()
        node.reload()
        import psycopg

        deadline = time.monotonic() + 10
        while True:
            try:
                with psycopg.connect(self.node_dsn(node.name), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def down(self, purge: bool = False) -> None:
        """Stop the supervisor, the pools and the servers (fast: running transactions are rolled
        back); ``purge`` then deletes the directory, data and passwords included."""
        from sagaz.ha.monitoring import stop_monitoring
        from sagaz.ha.supervisor import stop_supervisor

        stop_supervisor(self)  # first: it would start the monitoring processes again
        stop_monitoring(self)
        if self.state.patroni is not None:
            from sagaz.ha.patroni_cluster import PatroniCluster

            PatroniCluster(self).down(purge)
            return
        for role in ("ro", "rw"):
            self.bouncer(role).stop()
        for name in reversed(self.state.nodes):
            node = self.node(name)
            if node.exists:
                node.stop("fast")
        if purge:
            shutil.rmtree(self.directory, ignore_errors=True)

    @property
    def part_names(self) -> list[str]:
        """What ``restart`` takes: every node and both pools."""
        return [*self.state.nodes, "pgbouncer-rw", "pgbouncer-ro"]

    def restart(self, name: str) -> None:
        """Stop (fast: running transactions are rolled back) and start again one node or pool,
        whether it was running or not. A node keeps its role; the pools keep their targets (the
        supervisor keeps pgbouncer-ro on the replicas that answer)."""
        if name not in self.part_names:
            raise ConfigurationError(
                f"no part {name!r} in the cluster in {self.directory}; restart one of "
                f"{', '.join(self.part_names)} (primary {self.state.primary})")
        if name.startswith("pgbouncer-"):
            bouncer = self.bouncer(name.removeprefix("pgbouncer-"))
            bouncer.stop()
            bouncer.start()
            return
        if self.state.patroni is not None:
            raise ConfigurationError(
                f"Patroni manages {name}'s PostgreSQL: move the leader with `sagaz ha "
                "switchover`; a node's server is restarted by its Patroni when it dies")
        node = self.node(name)
        if not node.exists:
            raise ConfigurationError(
                f"{name} has not been created yet: `sagaz dev up` creates and starts it")
        node.stop("fast")
        node.write_settings()
        node.start()

    def run_roles_sql(self) -> None:
        """sql/roles.sql through psql as the superuser: the same file init-primary.sh runs."""
        script = resources.files("sagaz.deploy").joinpath("templates", "sql", "roles.sql")
        env = {**os.environ, "PGPASSWORD": self.passwords[SUPERUSER],
               "PGSSLMODE": "verify-full", "PGSSLROOTCERT": str(self.tls.ca_cert),
               "SAGAZ_APP_PASSWORD": self.passwords[APP_USER],
               "SAGAZ_READER_PASSWORD": self.passwords[READER_USER],
               "SAGAZ_REPLICATION_PASSWORD": self.passwords[REPLICATION_USER],
               "SAGAZ_MONITOR_PASSWORD": self.passwords[MONITOR_USER]}
        result = subprocess.run(
            [str(Path(self.state.bindir) / "psql"), "-X", "-q", "-h", self.primary.host, "-p",
             str(self.primary.port), "-U", SUPERUSER, "-d", "postgres",
             "-v", f"app_user={APP_USER}", "-v", f"reader_user={READER_USER}",
             "-v", f"replication_user={REPLICATION_USER}", "-v", f"app_db={self.state.dbname}",
             "-v", f"monitor_user={MONITOR_USER}",
             "-f", "-"], input=script.read_text("utf-8"), env=env, capture_output=True,
            text=True)
        if result.returncode != 0:
            raise SagazError(f"roles.sql failed: {result.stderr.strip()}")

    def slot_status(self, name: str) -> str | None:
        """The ``wal_status`` of the primary's replication slot ``name`` (reserved, extended,
        unreserved, lost), or None when there is no such slot (a replica rebuilt after its data
        was deleted reuses its slot)."""
        rows = self._on_primary("SELECT coalesce(wal_status, 'reserved') FROM "
                                "pg_replication_slots WHERE slot_name = %s", name)
        return str(rows[0][0]) if rows else None

    def drop_slot(self, name: str) -> None:
        """Drop the primary's replication slot ``name`` if it exists (its replica must not be
        streaming)."""
        self._on_primary("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                         "WHERE slot_name = %s", name)

    def _on_primary(self, query: str, *params: str) -> list[tuple[Any, ...]]:
        import psycopg

        try:
            with psycopg.connect(self.node_dsn(self.state.primary), autocommit=True,
                                 connect_timeout=5) as conn:
                return conn.execute(query, params).fetchall()
        except psycopg.Error as exc:
            raise SagazError(f"on {self.state.primary}: {' '.join(str(exc).split())}") from exc

    def set_max_slot_wal_keep_size(self, size: str) -> bool:
        """Change the WAL cap of every node (a reload is enough: no restart). False when it was
        the value already."""
        size = normalize_wal_size(size)
        if size == self.state.max_slot_wal_keep_size:
            return False
        self.state.max_slot_wal_keep_size = size
        self.save()
        for name in self.state.nodes:
            node = self.node(name)
            if node.exists:
                node.write_settings()
                if node.running:
                    node.reload()
        return True

    def migrate(self) -> list[int]:
        """Apply the schema migrations over a direct connection to the primary, as the owner."""
        import psycopg

        from sagaz.storage.postgresql.migrate import migrate

        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=5) as conn:
            return migrate(conn)
