"""``sagaz init [--with-ha]``: a docker-compose deployment of sagaz on PostgreSQL.

The files (relative to the output directory)::

    docker-compose.yaml   postgres-primary, postgres-replica[-N], pgbackrest-backup,
                          postgres-init, pgbouncer-rw, pgbouncer-ro, sagaz-worker,
                          sagaz-metrics, prometheus,
                          postgres-exporter[-replica[-N]] (one per server),
                          pgbouncer-exporter[-ro] (one per pool), grafana
    .env                  generated passwords and connection URLs (mode 0600)
    tls/                  the cluster CA and server certificate (0700, keys 0600; written by
                          the CLI, see sagaz.deploy.tls), unless --tls-dir names your own
    init-primary.sh  replica-bootstrap.sh (with replicas)  init-schema.sh  partitioning/*.sql
    tls-setup.sh
    pgbouncer/pgbouncer-rw.ini  pgbouncer/pgbouncer-ro.ini  pgbouncer/pgbouncer-start.sh
    pgbackrest/pgbackrest.conf  pgbackrest/Dockerfile  pgbackrest/pgbackrest-backup.sh
    monitoring/prometheus.yml  monitoring/alert-rules.yml  monitoring/grafana-datasources.yml
    monitoring/grafana-dashboards.yml  monitoring/dashboards/*.json
    monitoring/exporters/Dockerfile  monitoring/exporters/pgbouncer_exporter.py
    README.md  .gitignore (.env, tls/, keys; merged into an existing one)

Replica ``i`` (1-based) is the service ``postgres-replica`` (i = 1, the design's name) or
``postgres-replica-<i>``, published on 127.0.0.1:5432+i, with replication slot ``replica_<i>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sagaz.deploy import backup as backups
from sagaz.deploy import bundle
from sagaz.deploy.bundle import GeneratedFile, Secrets
from sagaz.deploy.monitoring import (
    EXPORTER_SCRIPT,
    EXPORTERS_IMAGE,
    HA_METRICS_PORT,
    METRICS_PORT,
    compose_monitoring_files,
    server_exporters,
)
from sagaz.deploy.render import render
from sagaz.deploy.schema import generated_schema_files
from sagaz.deploy.scripts import (
    POOL_PORTS,
    init_primary_script,
    pgbouncer_ini,
    pgbouncer_start_script,
    replica_bootstrap_script,
    tls_setup_script,
)
from sagaz.deploy.tls import (
    TLS_DIR,
    TLS_SOURCE,
    compose_tls_names,
    postgres_tls_settings,
    tls_query,
)
from sagaz.ha.pgbouncer import READ_POOL, WRITE_POOL, PoolSettings
from sagaz.ha.wal_settings import DEFAULT_MAX_SLOT_WAL_KEEP_SIZE, normalize_wal_size

__all__ = ["DEFAULT_IMAGE", "GITIGNORE", "ReplicaService", "compose_files", "replica_services",
           "tls_names"]

DEFAULT_IMAGE = "sagaz:latest"
"""The sagaz-worker service's image unless --image names one."""

GITIGNORE = """\
# Written by `sagaz init`: the passwords and private keys stay out of version control.
.env
tls/
*.key
"""


@dataclass(frozen=True)
class ReplicaService:
    name: str
    port: int
    slot: str


@dataclass(frozen=True)
class Pool:
    role: str
    port: int
    backends: list[str]
    settings: PoolSettings
    description: str


def replica_services(replicas: int) -> list[ReplicaService]:
    return [ReplicaService("postgres-replica" if i == 1 else f"postgres-replica-{i}",
                           5432 + i, f"replica_{i}") for i in range(1, replicas + 1)]


def _pools(replicas: list[ReplicaService]) -> list[Pool]:
    readers = [r.name for r in replicas] or ["postgres-primary"]
    return [
        Pool("rw", POOL_PORTS["rw"], ["postgres-primary"], WRITE_POOL,
             "Write pool: short OLTP transactions (sagas, outbox) to the primary."),
        Pool("ro", POOL_PORTS["ro"], readers, READ_POOL,
             "Read pool: analytics and dashboards over "
             + ("the replicas." if replicas else "the primary (there is no replica).")),
    ]


def tls_names(replicas: int) -> list[str]:
    """The names the server certificate of a deployment with ``replicas`` must carry."""
    return compose_tls_names([r.name for r in replica_services(replicas)])


def compose_files(replicas: int, secrets: Secrets | None = None, *,
                  max_slot_wal_keep_size: str = DEFAULT_MAX_SLOT_WAL_KEEP_SIZE,
                  tls_source: str = "./tls", host_ca_cert: str = "tls/ca.crt",
                  backup_s3: backups.S3Repository | None = None,
                  image: str = DEFAULT_IMAGE,
                  ) -> list[GeneratedFile]:
    """Every file of the deployment; ``replicas`` 0 is a single server (no --with-ha).
    ``tls_source``: the certificate directory the containers mount; ``host_ca_cert``: its CA as
    the clients of this host name it in the .env URLs (an absolute path, best). Backups go to a
    named volume, or to ``backup_s3``. ``image``: the sagaz-worker service's (your application
    with sagaz installed)."""
    bundle.validate_replicas(replicas, minimum=0)
    bundle.validate_image(image)
    secrets = secrets or bundle.generate_secrets()
    services = replica_services(replicas)
    pools = _pools(services)
    names = {"superuser": bundle.SUPERUSER, "app_user": bundle.APP_USER,
             "reader_user": bundle.READER_USER, "replication_user": bundle.REPLICATION_USER,
             "admin_user": bundle.PGBOUNCER_ADMIN, "stats_user": bundle.PGBOUNCER_STATS,
             "database": bundle.DATABASE, "monitor_user": bundle.MONITOR_USER}
    settings = [*bundle.server_settings(max_slot_wal_keep_size),
                *postgres_tls_settings(f"{TLS_DIR}/server.crt", f"{TLS_DIR}/server.key")]
    values = {"replicas": replicas, "replica_services": services, "pools": pools,
              "images": bundle.IMAGES, "settings": [*settings, *backups.archive_arguments()],
              "tls_source": tls_source, "tls_mount": TLS_SOURCE, "tls_dir": TLS_DIR,
              "backup": {"s3": backup_s3, "image": backups.BACKUP_IMAGE,
                         "paths": backups.CONTAINER_PATHS},
              "max_slot_wal_keep_size": normalize_wal_size(max_slot_wal_keep_size),
              "image": image, "exporters": server_exporters([r.name for r in services]),
              "monitoring": {"image": EXPORTERS_IMAGE, "script": EXPORTER_SCRIPT,
                             "metrics_port": METRICS_PORT, "ha_port": HA_METRICS_PORT},
              "q": json.dumps, **names}
    files = [
        GeneratedFile("docker-compose.yaml", render("compose/docker-compose.yaml.j2", **values)),
        GeneratedFile(".env", render(
            "compose/env.j2", secrets=secrets,
            storage_url=bundle.url(bundle.APP_USER, secrets.app, "localhost", POOL_PORTS["rw"])
            + tls_query(host_ca_cert),
            analytics_url=bundle.url(bundle.READER_USER, secrets.reader, "localhost",
                                     POOL_PORTS["ro"]) + tls_query(host_ca_cert),
            database_url=bundle.url(bundle.APP_USER, secrets.app, "localhost", 5432)
            + tls_query(host_ca_cert),
            backup_s3=backup_s3, **names), mode=0o600),
        GeneratedFile("init-primary.sh", init_primary_script(), 0o755),
        GeneratedFile("tls-setup.sh", tls_setup_script(), 0o755),
        *([GeneratedFile("replica-bootstrap.sh", replica_bootstrap_script(), 0o755)]
          if replicas else []),
        *generated_schema_files(),
        *(GeneratedFile(f"pgbouncer/pgbouncer-{pool.role}.ini",
                        pgbouncer_ini(pool.role, pool.backends)) for pool in pools),
        GeneratedFile("pgbouncer/pgbouncer-start.sh", pgbouncer_start_script(), 0o755),
        GeneratedFile("pgbackrest/pgbackrest.conf", backups.pgbackrest_conf(s3=backup_s3)),
        GeneratedFile("pgbackrest/Dockerfile",
                      backups.backup_dockerfile(bundle.IMAGES["postgres"])),
        GeneratedFile("pgbackrest/pgbackrest-backup.sh", backups.backup_schedule_script(), 0o755),
        *compose_monitoring_files([r.name for r in services], [p.role for p in pools]),
        GeneratedFile("monitoring/grafana-datasources.yml",
                      render("compose/grafana-datasources.yml.j2", **values)),
        GeneratedFile("README.md", render("compose/README.md.j2", **values)),
        GeneratedFile(".gitignore", GITIGNORE, merge_lines=True),
    ]
    return files
