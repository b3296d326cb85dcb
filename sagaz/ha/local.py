"""The docker-less local HA cluster: a primary, N streaming replicas, pgbouncer-rw (transaction
pooling to the primary) and pgbouncer-ro (the replicas), on loopback, from the machine's
PostgreSQL and PgBouncer binaries.

Layout of the cluster directory (default ``.sagaz/cluster``)::

    cluster.json     ports, nodes, which node is the primary (no secrets)
    secrets.json     generated passwords, mode 0600
    node0/ node1/    one PostgreSQL server each (data/, postgres.log, socket)
    pgbouncer-rw/ pgbouncer-ro/

Addresses: node i listens on 127.0.0.(i+1), every node on port P (``base_port``), so that
pgbouncer-ro can balance over the replicas with one host list and one port, as PgBouncer 1.18
requires. pgbouncer-rw listens on 127.0.0.1:P+1000 and pgbouncer-ro on 127.0.0.1:P+1001 (the
deployment's 5432/6432/6433 shifted, so a system PostgreSQL can keep its ports).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from psycopg.conninfo import make_conninfo

from sagaz.errors import SagazError
from sagaz.ha.osuser import service_user
from sagaz.ha.pgbouncer import READ_POOL, WRITE_POOL, Backend, PgBouncer
from sagaz.ha.postgres import PostgresNode, find_bindir

__all__ = ["ClusterState", "LocalCluster", "PRIMARY_SETTINGS"]

SUPERUSER = "postgres"
APP_USER = "sagaz"
READER_USER = "sagaz_reader"
REPLICATION_USER = "replicator"

PRIMARY_SETTINGS: dict[str, str] = {
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "hot_standby": "on",
    # Replicas report the oldest snapshot they need, so long analytics queries are not cancelled
    # by the primary's vacuum (at the price of some bloat while they run).
    "hot_standby_feedback": "on",
    "wal_keep_size": "'256MB'",
    "password_encryption": "'scram-sha-256'",
    "max_connections": "200",
    "shared_buffers": "'128MB'",
    # Lag measurements and failover drills want replicas to apply WAL without delay.
    "max_standby_streaming_delay": "'5s'",
    "wal_receiver_status_interval": "'1s'",
    "log_line_prefix": "'%m [%p] %u@%d '",
}
"""Every node gets these (a replica may become the primary)."""


@dataclass
class ClusterState:
    """What ``cluster.json`` records: enough to find and drive a running cluster."""

    base_port: int
    dbname: str
    nodes: list[str]
    primary: str
    bindir: str

    def port(self, node: str) -> int:
        return self.base_port

    def host(self, node: str) -> str:
        return f"127.0.0.{int(node.removeprefix('node')) + 1}"

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
            dbname: str = "sagaz") -> LocalCluster:
        if replicas < 0:
            raise SagazError(f"--replicas must be 0 or more, not {replicas}")
        if not 1024 <= base_port <= 65535 - 1001 or replicas > 200:
            raise SagazError(f"--base-port must be between 1024 and {65535 - 1001}, "
                             "--replicas at most 200")
        nodes = [f"node{i}" for i in range(replicas + 1)]
        state = ClusterState(base_port, dbname, nodes, "node0", str(find_bindir()))
        return cls(directory.absolute(), state)

    @classmethod
    def load(cls, directory: Path) -> LocalCluster:
        directory = directory.absolute()
        try:
            state = ClusterState(**json.loads((directory / "cluster.json").read_text()))
            passwords = json.loads((directory / "secrets.json").read_text())
        except FileNotFoundError:
            raise SagazError(
                f"no local cluster in {directory}: start one with `sagaz dev up --ha`") from None
        return cls(directory, state, passwords)

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "cluster.json").write_text(json.dumps(asdict(self.state), indent=2))
        path = self.directory / "secrets.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(self.passwords, out, indent=2)
        path.chmod(0o600)

    # -- parts -----------------------------------------------------------------------------------

    def node(self, name: str) -> PostgresNode:
        return PostgresNode(name, self.directory / name, self.state.port(name),
                            host=self.state.host(name), bindir=Path(self.state.bindir),
                            settings=dict(PRIMARY_SETTINGS))

    @property
    def primary(self) -> PostgresNode:
        return self.node(self.state.primary)

    @property
    def replicas(self) -> list[PostgresNode]:
        return [self.node(n) for n in self.state.replicas]

    def bouncer(self, role: str) -> PgBouncer:
        """pgbouncer-rw (to the primary) or pgbouncer-ro (to the replicas; to the primary when
        there is none)."""
        s = self.state
        targets = [s.primary] if role == "rw" else self.live_replicas() or [s.primary]
        # PgBouncer opens each new server connection to the next host of the list.
        hosts = ",".join(s.host(n) for n in targets)
        backends = [Backend(s.dbname, hosts, s.base_port, s.dbname)]
        return PgBouncer(
            self.directory / f"pgbouncer-{role}", port=s.rw_port if role == "rw" else s.ro_port,
            backends=backends, admin_user=SUPERUSER, role=role,
            settings=WRITE_POOL if role == "rw" else READ_POOL,
            passwords={u: self.passwords[u] for u in (SUPERUSER, APP_USER, READER_USER)})

    def live_replicas(self) -> list[str]:
        return [n for n in self.state.replicas if self.node(n).running]

    # -- connection strings ----------------------------------------------------------------------

    def dsn(self, *, user: str = APP_USER, port: int | None = None, dbname: str | None = None,
            **extra: Any) -> str:
        return make_conninfo(
            "", host="127.0.0.1" if port else self.state.host(self.state.primary),
            port=port or self.state.base_port,
            user=user, password=self.passwords[user], dbname=dbname or self.state.dbname,
            **extra)

    def env(self) -> dict[str, str]:
        """The variables an application of this cluster sets."""
        rw = self.dsn(port=self.state.rw_port)
        ro = self.dsn(user=READER_USER, port=self.state.ro_port)
        direct = self.dsn()
        return {"SAGAZ_STORAGE_URL": _url(rw), "SAGAZ_ANALYTICS_URL": _url(ro),
                "SAGAZ_DATABASE_URL": _url(direct)}

    # -- lifecycle -------------------------------------------------------------------------------

    def up(self, progress: Callable[[str], None] = lambda _: None) -> None:
        """Create what is missing and start what is stopped; idempotent."""
        if not self.passwords:
            self.passwords = {u: secrets.token_urlsafe(24)
                              for u in (SUPERUSER, APP_USER, READER_USER, REPLICATION_USER)}
        self.save()
        service_user().own(self.directory)
        primary = self.primary
        if not primary.exists:
            progress(f"initdb {primary.name} (primary, port {primary.port})")
            primary.init_primary(SUPERUSER, self.passwords[SUPERUSER])
        if not primary.running:
            progress(f"starting {primary.name}")
            primary.write_settings()
            primary.start()
        progress("roles and database (sql/roles.sql)")
        self.run_roles_sql()
        progress("schema and partitions (migrations)")
        self.migrate()
        for replica in self.replicas:
            if not replica.exists:
                progress(f"pg_basebackup {replica.name} (replica, port {replica.port})")
                replica.init_replica(primary, REPLICATION_USER,
                                     self.passwords[REPLICATION_USER], slot=replica.name)
            if not replica.running:
                progress(f"starting {replica.name}")
                replica.write_settings()
                replica.start()
        for role in ("rw", "ro"):
            bouncer = self.bouncer(role)
            if bouncer.pid is None:
                progress(f"starting pgbouncer-{role} (port {bouncer.port})")
                bouncer.start()
            else:
                bouncer.reload()

    def down(self, purge: bool = False) -> None:
        for role in ("ro", "rw"):
            self.bouncer(role).stop()
        for name in reversed(self.state.nodes):
            node = self.node(name)
            if node.exists:
                node.stop("fast")
        if purge:
            shutil.rmtree(self.directory, ignore_errors=True)

    def run_roles_sql(self) -> None:
        """sql/roles.sql through psql as the superuser: the same file init-primary.sh runs."""
        script = resources.files("sagaz.deploy").joinpath("templates", "sql", "roles.sql")
        env = {**os.environ, "PGPASSWORD": self.passwords[SUPERUSER],
               "SAGAZ_APP_PASSWORD": self.passwords[APP_USER],
               "SAGAZ_READER_PASSWORD": self.passwords[READER_USER],
               "SAGAZ_REPLICATION_PASSWORD": self.passwords[REPLICATION_USER]}
        result = subprocess.run(
            [str(Path(self.state.bindir) / "psql"), "-X", "-q", "-h", self.primary.host, "-p",
             str(self.primary.port), "-U", SUPERUSER, "-d", "postgres",
             "-v", f"app_user={APP_USER}", "-v", f"reader_user={READER_USER}",
             "-v", f"replication_user={REPLICATION_USER}", "-v", f"app_db={self.state.dbname}",
             "-f", "-"], input=script.read_text("utf-8"), env=env, capture_output=True,
            text=True)
        if result.returncode != 0:
            raise SagazError(f"roles.sql failed: {result.stderr.strip()}")

    def migrate(self) -> list[int]:
        """Apply the schema migrations over a direct connection to the primary, as the owner."""
        import psycopg

        from sagaz.storage.postgresql.migrate import migrate

        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=5) as conn:
            return migrate(conn)


def _url(conninfo: str) -> str:
    """A ``postgresql://`` URL for a key=value conninfo (the SAGAZ_* variables take URLs)."""
    from urllib.parse import quote

    from psycopg.conninfo import conninfo_to_dict

    p = conninfo_to_dict(conninfo)
    return (f"postgresql://{quote(str(p['user']), safe='')}:{quote(str(p['password']), safe='')}"
            f"@{p['host']}:{p['port']}/{quote(str(p['dbname']), safe='')}")
