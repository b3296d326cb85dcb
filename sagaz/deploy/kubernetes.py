"""``sagaz init --k8s [--with-ha]``: Kubernetes manifests for sagaz on PostgreSQL, under ``k8s/``::

    namespace.yaml  secrets.yaml (generated passwords, mode 0600)  secrets-example.yaml
    postgresql-ha.yaml  pgbouncer.yaml  maintenance-cronjob.yaml  pgbackrest-backup.yaml
    pgbackrest/Dockerfile  sagaz-worker.yaml
    network-policies.yaml  prometheus-rules.yaml (PodMonitor, PrometheusRule)
    grafana-dashboards.yaml  kustomization.yaml  README.md  .gitignore

The scripts, SQL and pgbouncer.ini files are the docker-compose deployment's, carried in
ConfigMaps; the PostgreSQL settings and pool settings are the local cluster's.

TLS: the certificates (``k8s/tls/``, made by the CLI, or ``--tls-dir``) go into the Secrets
``sagaz-tls`` (kubernetes.io/tls with ca.crt, the shape cert-manager writes) and ``sagaz-ca``,
mounted at :data:`sagaz.deploy.tls.K8S_TLS_DIR`; every URL and client verifies the server.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import PurePosixPath

from sagaz.deploy import backup as backups
from sagaz.deploy import bundle
from sagaz.deploy.bundle import GeneratedFile, Secrets
from sagaz.deploy.monitoring import METRICS_PORT
from sagaz.deploy.render import render
from sagaz.deploy.schema import generated_schema_files
from sagaz.deploy.scripts import (
    POOL_PORTS,
    init_primary_script,
    pgbouncer_ini,
    pgbouncer_start_script,
    replica_bootstrap_script,
)
from sagaz.deploy.tls import K8S_TLS_DIR, postgres_tls_settings, tls_query
from sagaz.ha.archive_settings import STANZA
from sagaz.ha.wal_settings import DEFAULT_MAX_SLOT_WAL_KEEP_SIZE, normalize_wal_size
from sagaz.monitoring.dashboards import DASHBOARDS, grafana_json
from sagaz.monitoring.rules import AlertSettings, alert_rules
from sagaz.tls import TlsFiles

__all__ = ["DEFAULT_IMAGE", "DEFAULT_NAMESPACE", "DEFAULT_STORAGE_SIZE", "SECRET_NAME",
           "kubernetes_files"]

DEFAULT_NAMESPACE = "sagaz"
DEFAULT_STORAGE_SIZE = "10Gi"
DEFAULT_IMAGE = "sagaz:latest"
SECRET_NAME = "sagaz-postgres"

# In the order `kubectl apply -k` should create them: the Secret before the pods that read it.
RESOURCES = ["namespace.yaml", "secrets.yaml", "postgresql-ha.yaml", "pgbouncer.yaml",
             "maintenance-cronjob.yaml", "pgbackrest-backup.yaml", "sagaz-worker.yaml",
             "network-policies.yaml", "prometheus-rules.yaml", "grafana-dashboards.yaml"]


@dataclass(frozen=True)
class ConfigFile:
    key: str
    """The ConfigMap key (a file name: keys cannot hold '/')."""
    path: str
    """Where the pod sees it, relative to the mount."""
    content: str


@dataclass(frozen=True)
class K8sPool:
    role: str
    port: int
    ini: str

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(self.ini.encode()).hexdigest()[:16]


def kubernetes_files(replicas: int, *, namespace: str = DEFAULT_NAMESPACE,
                     storage_size: str = DEFAULT_STORAGE_SIZE, image: str = DEFAULT_IMAGE,
                     secrets: Secrets | None = None, subdir: str = "k8s",
                     max_slot_wal_keep_size: str = DEFAULT_MAX_SLOT_WAL_KEEP_SIZE,
                     tls: TlsFiles | None = None,
                     ) -> list[GeneratedFile]:
    """Every manifest, under ``subdir``; ``replicas`` 0 is a single server (no --with-ha).
    ``tls``: the certificates for the TLS Secrets (empty values without: the example's shape)."""
    bundle.validate_replicas(replicas, minimum=0)
    bundle.validate_namespace(namespace)
    bundle.validate_storage_size(storage_size)
    bundle.validate_image(image)
    secrets = secrets or bundle.generate_secrets()
    schema = [ConfigFile(PurePosixPath(f.path).name, f.path, f.content)
              for f in generated_schema_files()]
    readers = ["postgresql-read"] if replicas else ["postgresql-primary"]
    pem = {"tls_dir": K8S_TLS_DIR, "server_cert": "tls.crt", "server_key": "tls.key"}
    pools = [K8sPool("rw", POOL_PORTS["rw"], pgbouncer_ini("rw", ["postgresql-primary"], **pem)),
             K8sPool("ro", POOL_PORTS["ro"], pgbouncer_ini("ro", readers, **pem))]
    verify = tls_query(f"{K8S_TLS_DIR}/ca.crt")
    svc = f"{namespace}.svc.cluster.local"
    urls = {
        "storage": bundle.url(bundle.APP_USER, secrets.app, f"pgbouncer-rw.{svc}",
                              POOL_PORTS["rw"]) + verify,
        "analytics": bundle.url(bundle.READER_USER, secrets.reader, f"pgbouncer-ro.{svc}",
                                POOL_PORTS["ro"]) + verify,
        "database": bundle.url(bundle.APP_USER, secrets.app, f"postgresql-primary.{svc}",
                               5432) + verify,
    }
    url_forms = {
        "storage": f"postgresql://{bundle.APP_USER}:<app-password>@pgbouncer-rw.{svc}:6432/"
                   f"{bundle.DATABASE}{verify}",
        "analytics": f"postgresql://{bundle.READER_USER}:<reader-password>@pgbouncer-ro.{svc}:"
                     f"6433/{bundle.DATABASE}{verify}",
        "database": f"postgresql://{bundle.APP_USER}:<app-password>@postgresql-primary.{svc}:"
                    f"5432/{bundle.DATABASE}{verify}",
    }
    values = {
        "replicas": replicas, "namespace": namespace, "storage_size": storage_size,
        "image": image, "images": bundle.IMAGES,
        "settings": [*bundle.server_settings(max_slot_wal_keep_size),
                     *postgres_tls_settings(f"{K8S_TLS_DIR}/tls.crt", f"{K8S_TLS_DIR}/tls.key"),
                     *backups.archive_arguments()],
        "tls_dir": K8S_TLS_DIR,
        "backup_image": backups.BACKUP_IMAGE, "backup_paths": backups.CONTAINER_PATHS,
        "pgbackrest_conf": backups.pgbackrest_conf(), "stanza": STANZA,
        "max_slot_wal_keep_size": normalize_wal_size(max_slot_wal_keep_size),
        "q": json.dumps, "secret_name": SECRET_NAME, "superuser": bundle.SUPERUSER,
        "app_user": bundle.APP_USER, "reader_user": bundle.READER_USER,
        "replication_user": bundle.REPLICATION_USER, "admin_user": bundle.PGBOUNCER_ADMIN,
        "stats_user": bundle.PGBOUNCER_STATS,
        "database": bundle.DATABASE, "schema": schema, "pools": pools,
        "init_primary": init_primary_script(), "replica_bootstrap": replica_bootstrap_script(),
        "pgbouncer_start": pgbouncer_start_script(), "url_forms": url_forms,
        "resources": RESOURCES, "dir_hint": subdir + "/", "metrics_port": METRICS_PORT,
    }

    def manifest(name: str, mode: int = 0o644, **extra: object) -> GeneratedFile:
        template = name.replace("secrets-example", "secrets") + ".j2"
        return GeneratedFile(f"{subdir}/{name}", render(f"k8s/{template}", **values, **extra),
                             mode)

    return [
        manifest("namespace.yaml"),
        manifest("secrets.yaml", 0o600, example=False, secrets=secrets, urls=urls,
                 tls=_tls_data(tls)),
        manifest("secrets-example.yaml", example=True, secrets=None, urls=None, tls=None),
        manifest("postgresql-ha.yaml"),
        manifest("pgbouncer.yaml"),
        manifest("maintenance-cronjob.yaml"),
        manifest("pgbackrest-backup.yaml"),
        GeneratedFile(f"{subdir}/pgbackrest/Dockerfile",
                      backups.backup_dockerfile(bundle.IMAGES["postgres"])),
        manifest("sagaz-worker.yaml"),
        manifest("network-policies.yaml"),
        # The PodMonitor's job is <namespace>/<its name>. WAL archiving is watched where an
        # exporter reads pg_stat_archiver (docker-compose, the local cluster), not here.
        manifest("prometheus-rules.yaml", rules=alert_rules(AlertSettings(
            sagaz_job=f"{namespace}/sagaz-worker", archive=False))),
        manifest("grafana-dashboards.yaml", dashboards=[
            {"title": d.title, "file_name": d.file_name, "json": grafana_json(d)}
            for d in DASHBOARDS]),
        manifest("kustomization.yaml"),
        manifest("README.md"),
        GeneratedFile(f"{subdir}/.gitignore",
                      "# Written by `sagaz init --k8s`: the Secret with real passwords, and "
                      "private keys.\nsecrets.yaml\ntls/*.key\n*.key\n", merge_lines=True),
    ]


def _tls_data(tls: TlsFiles | None) -> dict[str, str]:
    """The Secrets' data: each PEM file base64-encoded (empty without certificates)."""
    paths = {"ca_cert": "ca.crt", "ca_key": "ca.key", "server_cert": "server.crt",
             "server_key": "server.key"}
    if tls is None:
        return dict.fromkeys(paths, "")
    return {key: base64.b64encode((tls.directory / name).read_bytes()).decode()
            for key, name in paths.items()}
