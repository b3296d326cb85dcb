"""``sagaz init --with-ha --failover``: docker-compose with automatic failover.

The files (relative to the output directory)::

    docker-compose.yaml   etcd1..3, patroni1..3, postgres-roles, postgres-init, pgbouncer-rw,
                          pgbouncer-ro, prometheus
    .env                  generated passwords and connection URLs (mode 0600)
    patroni/Dockerfile    the PostgreSQL image + etcd, PgBouncer (Debian) and Patroni (PyPI)
    patroni/patroniN.yml  each node's Patroni configuration, from the template the local cluster
                          renders too (sagaz.deploy.patroni); passwords come from the
                          environment, not from these files
    pgbouncer/pgbouncer-rw.ini  pgbouncer/pgbouncer-ro.ini  pgbouncer/pgbouncer-start.sh
    pgbouncer/patroni-follow.py the follower: this package's sagaz/deploy/patroni_follow.py,
                          copied verbatim (what the local supervisor runs)
    init-primary.sh (roles.sql)  init-schema.sh  partitioning/*.sql  tls-setup.sh
    monitoring/prometheus.yml    README.md  .gitignore

Node ``patroniN`` publishes PostgreSQL on 127.0.0.1:5432+N; pgbouncer-rw on 6432 and
pgbouncer-ro on 6433 as in every sagaz deployment.
"""

from __future__ import annotations

import json
import secrets as secret_tokens
from dataclasses import dataclass
from importlib import resources
from urllib.parse import quote

from sagaz.deploy import bundle
from sagaz.deploy.bundle import GeneratedFile, Secrets
from sagaz.deploy.patroni import PatroniNode, PatroniSettings, render_patroni_config
from sagaz.deploy.render import render
from sagaz.deploy.schema import generated_schema_files
from sagaz.deploy.scripts import (
    POOL_PORTS,
    init_primary_script,
    pgbouncer_ini,
    pgbouncer_start_script,
    tls_setup_script,
)
from sagaz.deploy.tls import TLS_DIR, TLS_SOURCE, tls_query

__all__ = ["FAILOVER_IMAGE", "PATRONI_REQUIREMENT", "compose_failover_files", "failover_nodes",
           "failover_tls_names"]

FAILOVER_IMAGE = "sagaz/postgres-patroni:16"
"""The image docker-compose builds from patroni/Dockerfile."""
BASE_IMAGE, PG_MAJOR = "postgres:16", 16
PATRONI_REQUIREMENT = "patroni[etcd3]>=4,<5"
PSYCOPG_REQUIREMENT = "psycopg[binary]>=3.1"
NODES = 3
API_PORT = 8008


@dataclass(frozen=True)
class FailoverNode:
    name: str
    etcd: str
    host_port: int


@dataclass(frozen=True)
class _Pool:
    role: str
    port: int
    description: str


def failover_nodes(count: int = NODES) -> list[FailoverNode]:
    return [FailoverNode(f"patroni{i}", f"etcd{i}", 5432 + i) for i in range(1, count + 1)]


def failover_tls_names(count: int = NODES) -> list[str]:
    """The names the server certificate carries: every service clients or members reach by
    name, and the published ports on this host."""
    nodes = failover_nodes(count)
    return [*(n.name for n in nodes), *(n.etcd for n in nodes), "pgbouncer-rw", "pgbouncer-ro",
            "localhost", "127.0.0.1"]


def patroni_config(node: FailoverNode, nodes: list[FailoverNode],
                   settings: PatroniSettings, cluster_parameters: dict[str, str]) -> str:
    """patroni.yml of one container: container addresses and paths, no passwords (Patroni reads
    them from PATRONI_*_PASSWORD)."""
    spec = PatroniNode(
        name=node.name, scope="sagaz",
        restapi_listen=f"0.0.0.0:{API_PORT}", restapi_connect=f"{node.name}:{API_PORT}",
        pg_listen="0.0.0.0:5432", pg_connect=f"{node.name}:5432",
        data_dir="/var/lib/postgresql/data/pgdata", pgpass="/tmp/pgpass-patroni",
        bin_dir=f"/usr/lib/postgresql/{PG_MAJOR}/bin",
        etcd_hosts=[f"{n.etcd}:2379" for n in nodes],
        tls_cert=f"{TLS_DIR}/server.crt", tls_key=f"{TLS_DIR}/server.key",
        tls_ca=f"{TLS_DIR}/ca.crt", restapi_user="patroni", restapi_password="",
        superuser=bundle.SUPERUSER, superuser_password="",
        replication_user=bundle.REPLICATION_USER, replication_password="",
        # The containers' network: any address, but only over TLS and with a password.
        networks=["0.0.0.0/0", "::/0"],
        node_parameters={"unix_socket_directories": "/var/run/postgresql", "ssl": "on",
                         "ssl_cert_file": f"{TLS_DIR}/server.crt",
                         "ssl_key_file": f"{TLS_DIR}/server.key",
                         "ssl_min_protocol_version": "TLSv1.2"})
    return render_patroni_config(spec, settings, cluster_parameters)


def follower_script() -> str:
    """patroni_follow.py as it is: the pools of docker-compose run the local cluster's code."""
    return resources.files("sagaz.deploy").joinpath("patroni_follow.py").read_text("utf-8")


def compose_failover_files(secrets: Secrets | None = None, *,
                           settings: PatroniSettings | None = None,
                           cluster_parameters: dict[str, str] | None = None,
                           tls_source: str = "./tls", host_ca_cert: str = "tls/ca.crt",
                           api_password: str | None = None) -> list[GeneratedFile]:
    """Every file of the deployment. ``cluster_parameters``: the PostgreSQL settings of every
    node (postgresql.conf syntax), the local cluster's by default."""
    secrets = secrets or bundle.generate_secrets()
    settings = settings or PatroniSettings()
    parameters = cluster_parameters if cluster_parameters is not None else \
        dict(s.split("=", 1) for s in bundle.server_settings())
    nodes = failover_nodes()
    hosts = [n.name for n in nodes]
    pools = [_Pool("rw", POOL_PORTS["rw"], "Write pool: transaction pooling to the leader."),
             _Pool("ro", POOL_PORTS["ro"], "Read pool: the replicas that stream.")]
    names = {"superuser": bundle.SUPERUSER, "app_user": bundle.APP_USER,
             "reader_user": bundle.READER_USER, "database": bundle.DATABASE,
             "monitor_user": bundle.MONITOR_USER}
    values = {"nodes": nodes, "pools": pools, "image": FAILOVER_IMAGE, "images": bundle.IMAGES,
              "tls_source": tls_source, "tls_mount": TLS_SOURCE, "tls_dir": TLS_DIR,
              "initial_cluster": ",".join(f"{n.etcd}=https://{n.etcd}:2380" for n in nodes),
              "pg_hosts": ",".join(hosts),
              "api_endpoints": ",".join(f"{h}:{API_PORT}" for h in hosts),
              "patroni_targets": [f"{h}:{API_PORT}" for h in hosts], "q": json.dumps, **names}
    multihost = ",".join(f"localhost:{n.host_port}" for n in nodes)
    env = render(
        "compose/env.j2", secrets=secrets, backup_s3=None,
        storage_url=bundle.url(bundle.APP_USER, secrets.app, "localhost", POOL_PORTS["rw"])
        + tls_query(host_ca_cert),
        analytics_url=bundle.url(bundle.READER_USER, secrets.reader, "localhost",
                                 POOL_PORTS["ro"]) + tls_query(host_ca_cert),
        # Every node; libpq connects to the one that accepts writes, wherever the leader is.
        database_url=f"postgresql://{quote(bundle.APP_USER, safe='')}:"
        f"{quote(secrets.app, safe='')}@{multihost}/{bundle.DATABASE}"
        + tls_query(host_ca_cert) + "&target_session_attrs=read-write", **names,
        admin_user=bundle.PGBOUNCER_ADMIN, stats_user=bundle.PGBOUNCER_STATS,
        replication_user=bundle.REPLICATION_USER)
    env += ("# Basic auth of Patroni's REST API (user patroni): switchover, failover, restart.\n"
            f"SAGAZ_PATRONI_API_PASSWORD={api_password or secret_tokens.token_urlsafe(24)}\n")
    return [
        GeneratedFile("docker-compose.yaml",
                      render("compose/docker-compose-failover.yaml.j2", **values)),
        GeneratedFile(".env", env, mode=0o600),
        GeneratedFile("patroni/Dockerfile", render(
            "patroni/Dockerfile.j2", base_image=BASE_IMAGE, pg_major=PG_MAJOR,
            patroni_requirement=PATRONI_REQUIREMENT, psycopg_requirement=PSYCOPG_REQUIREMENT)),
        *(GeneratedFile(f"patroni/{n.name}.yml", patroni_config(n, nodes, settings, parameters))
          for n in nodes),
        GeneratedFile("init-primary.sh", init_primary_script(), 0o755),
        GeneratedFile("tls-setup.sh", tls_setup_script(), 0o755),
        *generated_schema_files(),
        GeneratedFile("pgbouncer/pgbouncer-rw.ini", pgbouncer_ini("rw", hosts[:1])),
        GeneratedFile("pgbouncer/pgbouncer-ro.ini", pgbouncer_ini("ro", hosts[1:])),
        GeneratedFile("pgbouncer/pgbouncer-start.sh", pgbouncer_start_script(), 0o755),
        GeneratedFile("pgbouncer/patroni-follow.py", follower_script()),
        GeneratedFile("monitoring/prometheus.yml",
                      render("compose/prometheus-failover.yml.j2", **values)),
        GeneratedFile("README.md", render("compose/README-failover.md.j2", **values)),
        GeneratedFile(".gitignore", "# Written by `sagaz init`: the passwords and private keys "
                      "stay out of version control.\n.env\ntls/\n*.key\n", merge_lines=True),
    ]
