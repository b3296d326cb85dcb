"""``sagaz init --k8s [--with-ha] [--sync]``: Kubernetes manifests for sagaz on PostgreSQL run by
the CloudNativePG operator, under ``k8s/``::

    namespace.yaml  secrets.yaml (generated passwords, mode 0600)  secrets-example.yaml
    postgresql-cluster.yaml  poolers.yaml  backups.yaml  maintenance-cronjob.yaml
    sagaz-worker.yaml  network-policies.yaml  pod-monitors.yaml
    prometheus-rules.yaml (PodMonitor of the worker, PrometheusRule)  grafana-dashboards.yaml
    kustomization.yaml  README.md

One ``Cluster`` of ``replicas + 1`` instances (``replicas`` 0: a single instance, the same
templates): the operator elects the primary and fails over. Its bootstrap SQL is roles.sql and the
migrations (:mod:`sagaz.deploy.cnpg_sql`); its parameters and the two ``Pooler``\\ s' sizes are the
local cluster's. TLS: the operator's certificates (its CA in Secret ``<cluster>-ca``), or yours
(``--tls-dir``: Secret ``sagaz-tls``); every URL and client verifies the server with that CA,
mounted at :data:`sagaz.deploy.tls.K8S_TLS_DIR`.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass

from sagaz.deploy import bundle
from sagaz.deploy.bundle import GeneratedFile, Secrets
from sagaz.deploy.cnpg_sql import roles_sql, schema_sql
from sagaz.deploy.monitoring import METRICS_PORT
from sagaz.deploy.render import render
from sagaz.deploy.scripts import POOL_PORTS
from sagaz.deploy.tls import K8S_TLS_DIR, tls_query
from sagaz.errors import SagazError
from sagaz.ha.local import PRIMARY_SETTINGS
from sagaz.ha.pgbouncer import READ_POOL, WRITE_POOL, PoolSettings
from sagaz.ha.wal_settings import DEFAULT_MAX_SLOT_WAL_KEEP_SIZE, wal_retention_settings
from sagaz.monitoring.dashboards import DASHBOARDS, grafana_json
from sagaz.monitoring.rules import AlertSettings, alert_rules
from sagaz.tls import TlsFiles

__all__ = ["CLUSTER_NAME", "DEFAULT_IMAGE", "DEFAULT_NAMESPACE", "DEFAULT_STORAGE_SIZE",
           "OPERATOR_MANIFEST", "OPERATOR_NAMESPACE", "SECRET_NAME", "k8s_tls_names",
           "kubernetes_files"]

DEFAULT_NAMESPACE = "sagaz"
DEFAULT_STORAGE_SIZE = "10Gi"
DEFAULT_IMAGE = "sagaz:latest"
SECRET_NAME = "sagaz-postgres"
CLUSTER_NAME = "postgresql"
"""The CloudNativePG Cluster: pods postgresql-1..N, Services postgresql-rw, -ro, -r."""
OPERATOR_NAMESPACE = "cnpg-system"
OPERATOR_MANIFEST = ("https://raw.githubusercontent.com/cloudnative-pg/cloudnative-pg/"
                     "release-1.30/releases/cnpg-1.30.0.yaml")
"""The operator release these manifests are written (and validated) for."""

# In the order `kubectl apply -k` should create them: the Secrets before the Cluster that reads
# them. pod-monitors.yaml and prometheus-rules.yaml are not listed: they need the Prometheus
# Operator's CRDs. backups.yaml only with a VolumeSnapshotClass (--backup-snapshot-class).
RESOURCES = ["namespace.yaml", "secrets.yaml", "postgresql-cluster.yaml", "poolers.yaml",
             "backups.yaml", "maintenance-cronjob.yaml", "sagaz-worker.yaml",
             "network-policies.yaml", "grafana-dashboards.yaml"]

_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")

_SET_BY_THE_OPERATOR = {"wal_level", "hot_standby", "max_replication_slots", "log_line_prefix"}
"""PRIMARY_SETTINGS the operator owns: it refuses hot_standby, needs wal_level and slots of its
own for its replicas, and writes its own (JSON) logs."""


@dataclass(frozen=True)
class Pool:
    role: str
    port: int
    type: str
    """The Cluster's Service the pool fronts: rw (primary), ro (replicas) or r (any instance)."""
    mode: str
    parameters: dict[str, str]


@dataclass(frozen=True)
class ManagedRole:
    name: str
    secret: str
    password: str
    comment: str
    in_roles: tuple[str, ...] = ()


def _pool(role: str, settings: PoolSettings, mode: str, service: str) -> Pool:
    parameters = {
        "max_client_conn": settings.max_client_conn,
        "default_pool_size": settings.default_pool_size,
        "min_pool_size": settings.min_pool_size, "reserve_pool_size": settings.reserve_pool_size,
        "server_login_retry": settings.server_login_retry,
        "query_wait_timeout": settings.query_wait_timeout,
        "server_check_delay": settings.server_check_delay,
    }
    # PgBouncer takes its parameters as strings in a Pooler; clients must come over TLS.
    return Pool(role, POOL_PORTS[role], service, mode,
                {**{k: str(v) for k, v in parameters.items()}, "client_tls_sslmode": "require"})


def pools(replicas: int) -> list[Pool]:
    """pgbouncer-rw: the write pool's settings, transaction pooling to the primary. pgbouncer-ro:
    the read pool's sizes in session mode (the design's: long analytics queries) over the
    replicas, or over the single instance when there are none."""
    return [_pool("rw", WRITE_POOL, WRITE_POOL.pool_mode, "rw"),
            _pool("ro", READ_POOL, "session", "ro" if replicas else "r")]


def postgres_parameters(max_slot_wal_keep_size: str) -> dict[str, str]:
    settings = {**PRIMARY_SETTINGS, **wal_retention_settings(max_slot_wal_keep_size)}
    return {name: _unquote(value) for name, value in settings.items()
            if name not in _SET_BY_THE_OPERATOR}


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    return value


def k8s_tls_names(namespace: str) -> list[str]:
    """What clients connect to, in each form a pod may use: the Cluster's Services and the pools
    (the operator adds its Services to its own certificate; a --tls-dir one must name them)."""
    services = [f"{CLUSTER_NAME}-rw", f"{CLUSTER_NAME}-ro", f"{CLUSTER_NAME}-r", "pgbouncer-rw",
                "pgbouncer-ro"]
    return [form for service in services for form in _dns_forms(service, namespace)]


def _dns_forms(service: str, namespace: str) -> list[str]:
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local"]


def kubernetes_files(replicas: int, *, namespace: str = DEFAULT_NAMESPACE,
                     storage_size: str = DEFAULT_STORAGE_SIZE, image: str = DEFAULT_IMAGE,
                     secrets: Secrets | None = None, subdir: str = "k8s",
                     max_slot_wal_keep_size: str = DEFAULT_MAX_SLOT_WAL_KEEP_SIZE,
                     tls: TlsFiles | None = None, synchronous: bool = False,
                     snapshot_class: str | None = None) -> list[GeneratedFile]:
    """Every manifest, under ``subdir``; ``replicas`` 0 is a single instance (no --with-ha).
    ``tls``: your certificates (--tls-dir); None for the operator's own. ``synchronous``: every
    commit waits for a replica (``dataDurability: required``). ``snapshot_class``: the
    VolumeSnapshotClass of the daily backups (the operator takes none without one)."""
    bundle.validate_replicas(replicas, minimum=0)
    bundle.validate_namespace(namespace)
    bundle.validate_storage_size(storage_size)
    bundle.validate_image(image)
    if synchronous and not replicas:
        raise SagazError("--sync needs replicas to wait for: add --with-ha (a single instance "
                         "has no synchronous standby)")
    if snapshot_class is not None and not _OBJECT_NAME.match(snapshot_class):
        raise SagazError(f"--backup-snapshot-class {snapshot_class!r} is not a Kubernetes object "
                         "name: give the name of a VolumeSnapshotClass of your cluster "
                         "(`kubectl get volumesnapshotclass`), e.g. csi-hostpath-snapclass")
    secrets = secrets or bundle.generate_secrets()
    pool_list = pools(replicas)
    ca_secret = "sagaz-tls" if tls else f"{CLUSTER_NAME}-ca"
    verify = tls_query(f"{K8S_TLS_DIR}/ca.crt")
    svc = f"{namespace}.svc.cluster.local"
    hosts = {"storage": f"pgbouncer-rw.{svc}", "analytics": f"pgbouncer-ro.{svc}",
             "database": f"{CLUSTER_NAME}-rw.{svc}"}
    ports = {"storage": POOL_PORTS["rw"], "analytics": POOL_PORTS["ro"], "database": 5432}
    users = {"storage": (bundle.APP_USER, secrets.app, "<app-password>"),
             "analytics": (bundle.READER_USER, secrets.reader, "<reader-password>"),
             "database": (bundle.APP_USER, secrets.app, "<app-password>")}
    urls = {key: bundle.url(user, password, hosts[key], ports[key]) + verify
            for key, (user, password, _) in users.items()}
    url_forms = {key: f"postgresql://{user}:{hint}@{hosts[key]}:{ports[key]}/{bundle.DATABASE}"
                      f"{verify}" for key, (user, _, hint) in users.items()}
    roles = [ManagedRole(bundle.APP_USER, "sagaz-app", secrets.app,
                         "sagaz: the application, owner of its schema"),
             ManagedRole(bundle.READER_USER, "sagaz-reader", secrets.reader,
                         "sagaz: read-only, analytics and dashboards", ("pg_monitor",))]
    bootstrap_sql = [
        ("roles.sql", roles_sql(app_user=bundle.APP_USER, reader_user=bundle.READER_USER,
                                database=bundle.DATABASE)),
        ("schema.sql", schema_sql(app_user=bundle.APP_USER)),
    ]
    values = {
        "replicas": replicas, "instances": replicas + 1, "namespace": namespace,
        "storage_size": storage_size, "image": image, "images": bundle.IMAGES,
        "cluster": CLUSTER_NAME, "parameters": postgres_parameters(max_slot_wal_keep_size),
        "synchronous": synchronous, "sync_number": 1, "bootstrap_sql": bootstrap_sql,
        "roles": roles, "pools": pool_list, "own_tls": tls is not None, "ca_secret": ca_secret,
        "pooler_dns_names": [form for pool in pool_list
                             for form in _dns_forms(f"pgbouncer-{pool.role}", namespace)],
        "tls_dir": K8S_TLS_DIR, "q": json.dumps, "secret_name": SECRET_NAME,
        "superuser": bundle.SUPERUSER, "app_user": bundle.APP_USER,
        "reader_user": bundle.READER_USER, "database": bundle.DATABASE, "url_forms": url_forms,
        "resources": [name for name in RESOURCES
                      if snapshot_class or name != "backups.yaml"],
        "snapshot_class": snapshot_class, "dir_hint": subdir + "/",
        "operator_namespace": OPERATOR_NAMESPACE, "operator_manifest": OPERATOR_MANIFEST,
        "max_slot_wal_keep_size": postgres_parameters(max_slot_wal_keep_size)[
            "max_slot_wal_keep_size"],
        "metrics_port": METRICS_PORT,
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
        manifest("postgresql-cluster.yaml"),
        manifest("poolers.yaml"),
        *([manifest("backups.yaml")] if snapshot_class else []),
        manifest("maintenance-cronjob.yaml"),
        manifest("sagaz-worker.yaml"),
        manifest("network-policies.yaml"),
        manifest("pod-monitors.yaml"),
        # The PodMonitor's job is <namespace>/<its name>. WAL archiving is watched where an
        # exporter reads pg_stat_archiver (docker-compose, the local cluster), not here:
        # CloudNativePG's exporter names it cnpg_pg_stat_archiver_*.
        manifest("prometheus-rules.yaml", rules=alert_rules(AlertSettings(
            sagaz_job=f"{namespace}/sagaz-worker", archive=False))),
        manifest("grafana-dashboards.yaml", dashboards=[
            {"title": d.title, "file_name": d.file_name, "json": grafana_json(d)}
            for d in DASHBOARDS]),
        manifest("kustomization.yaml"),
        manifest("README.md"),
        GeneratedFile(f"{subdir}/.gitignore",
                      "# Written by `sagaz init --k8s`: the Secrets with real passwords, and "
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
