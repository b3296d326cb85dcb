"""The scripts and PgBouncer configurations docker-compose and Kubernetes share: the same files,
mounted from the output directory (compose) or from ConfigMaps (Kubernetes)."""

from __future__ import annotations

from dataclasses import asdict
from importlib import resources

from sagaz.deploy.bundle import (
    APP_USER,
    DATABASE,
    MONITOR_USER,
    PGBOUNCER_ADMIN,
    PGBOUNCER_STATS,
    READER_USER,
    REPLICATION_USER,
)
from sagaz.deploy.render import render
from sagaz.deploy.tls import TLS_DIR, TLS_SOURCE
from sagaz.ha.pgbouncer import READ_POOL, WRITE_POOL, Backend, server_tls_sslmode

__all__ = [
    "PGBOUNCER_AUTH_FILE", "POOL_PORTS", "init_primary_script", "pgbouncer_ini",
    "pgbouncer_start_script", "replica_bootstrap_script", "roles_sql", "tls_setup_script",
]

PGBOUNCER_AUTH_FILE = "/tmp/pgbouncer/userlist.txt"
"""Inside the PgBouncer container, written at start by pgbouncer-start.sh."""
POOL_PORTS = {"rw": 6432, "ro": 6433}
"""The design's ports: pgbouncer-rw 6432, pgbouncer-ro 6433 (also inside the containers, so an
address is the same from every client)."""

_NAMES = {"app_user": APP_USER, "reader_user": READER_USER,
          "replication_user": REPLICATION_USER, "database": DATABASE,
          "monitor_user": MONITOR_USER}


def roles_sql() -> str:
    """sagaz/deploy/templates/sql/roles.sql, which the local cluster runs too."""
    text = resources.files("sagaz.deploy").joinpath("templates", "sql", "roles.sql")
    sql = text.read_text("utf-8")
    return sql if sql.endswith("\n") else sql + "\n"


def init_primary_script() -> str:
    return render("scripts/init-primary.sh.j2", roles_sql=roles_sql(), **_NAMES)


def replica_bootstrap_script() -> str:
    return render("scripts/replica-bootstrap.sh.j2", **_NAMES)


def pgbouncer_start_script() -> str:
    return render("scripts/pgbouncer-start.sh.j2", auth_file=PGBOUNCER_AUTH_FILE,
                  admin_user=PGBOUNCER_ADMIN, stats_user=PGBOUNCER_STATS, **_NAMES)


def tls_setup_script() -> str:
    return render("scripts/tls-setup.sh.j2", tls_mount=TLS_SOURCE, tls_dir=TLS_DIR,
                  tls_source_hint="tls/ or --tls-dir")


def pgbouncer_ini(role: str, hosts: list[str], tls_dir: str = TLS_DIR,
                  server_cert: str = "server.crt", server_key: str = "server.key") -> str:
    """pgbouncer-rw (transaction pooling to the primary) or pgbouncer-ro (over ``hosts``, the
    replicas: PgBouncer opens each new server connection to the next host of the list), from the
    template and pool settings of the local cluster; logs go to the container's stderr. TLS to
    clients and servers with the certificates in ``tls_dir`` (ca.crt and the server's pair)."""
    settings = WRITE_POOL if role == "rw" else READ_POOL
    return render(
        "pgbouncer/pgbouncer.ini.j2", role=role,
        databases=[Backend(DATABASE, ",".join(hosts), 5432, DATABASE)],
        listen_addr="0.0.0.0", listen_port=POOL_PORTS[role], unix_socket_dir="", logfile="",
        pidfile="", auth_file=PGBOUNCER_AUTH_FILE, admin_user=PGBOUNCER_ADMIN,
        stats_user=PGBOUNCER_STATS,
        tls_cert_file=f"{tls_dir}/{server_cert}", tls_key_file=f"{tls_dir}/{server_key}",
        tls_ca_file=f"{tls_dir}/ca.crt", server_tls_sslmode=server_tls_sslmode([",".join(hosts)]),
        **asdict(settings))
