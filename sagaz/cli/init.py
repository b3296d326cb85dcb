"""``sagaz init``: write the deployment files of sagaz on PostgreSQL: docker-compose (default) or
Kubernetes (``--k8s``), a single server or, with ``--with-ha``, a primary with streaming replicas.
The generation lives in :mod:`sagaz.deploy.compose` and :mod:`sagaz.deploy.kubernetes`; this
module checks the options, writes (never over existing files without --force) and prints."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sagaz.ha.wal_settings import DEFAULT_MAX_SLOT_WAL_KEEP_SIZE, MAX_SLOT_WAL_KEEP_SIZE_ENV

from .common import ExitCode, execute, fail
from .output import escape, out, print_warning

if TYPE_CHECKING:
    from sagaz.deploy.backup import S3Repository
    from sagaz.deploy.bundle import GeneratedFile, Secrets
    from sagaz.deploy.kept_secrets import KeptSecrets
    from sagaz.tls import TlsFiles

__all__ = ["init"]


def init(
    with_ha: Annotated[bool, typer.Option(
        "--with-ha", envvar="SAGAZ_INIT_WITH_HA",
        help="A primary with streaming replicas (--replicas) instead of a single server.")] = False,
    failover: Annotated[bool, typer.Option(
        "--failover", envvar="SAGAZ_INIT_FAILOVER",
        help="With --with-ha (docker-compose): automatic failover, 3 etcd members and 3 Patroni "
             "nodes; the pools follow the leader.")] = False,
    k8s: Annotated[bool, typer.Option(
        "--k8s", envvar="SAGAZ_INIT_K8S",
        help="Kubernetes manifests (under DIR/k8s/) instead of docker-compose files.")] = False,
    directory: Annotated[Path, typer.Option(
        "--dir", envvar="SAGAZ_INIT_DIR", metavar="DIR", file_okay=False,
        help="Where to write the files (created if missing).")] = Path("."),
    replicas: Annotated[int | None, typer.Option(
        "--replicas", envvar="SAGAZ_INIT_REPLICAS", metavar="N", show_default=False,
        help="Streaming replicas, 1 to 8 (needs --with-ha). Default: 1 for docker-compose, 2 "
             "for Kubernetes.")] = None,
    namespace: Annotated[str | None, typer.Option(
        "--namespace", envvar="SAGAZ_K8S_NAMESPACE", metavar="NS", show_default=False,
        help="--k8s: the namespace of every resource. Default: sagaz.")] = None,
    storage_size: Annotated[str | None, typer.Option(
        "--storage-size", envvar="SAGAZ_K8S_STORAGE_SIZE", metavar="SIZE", show_default=False,
        help="--k8s: the volume of each PostgreSQL pod, e.g. 10Gi (the default) or 500Gi.")] = None,
    image: Annotated[str | None, typer.Option(
        "--image", envvar="SAGAZ_IMAGE", metavar="IMAGE", show_default=False,
        help="The image of the `sagaz worker` service (docker-compose) or Deployment (--k8s): "
             "your application's image with sagaz installed. Default: sagaz:latest.")] = None,
    sync: Annotated[bool, typer.Option(
        "--sync", envvar="SAGAZ_INIT_SYNC",
        help="Synchronous replication: a commit returns once a replica has it, so a failover "
             "loses no acknowledged commit. --k8s --with-ha: CloudNativePG `dataDurability: "
             "required` (writes wait while no replica is available); --with-ha --failover: "
             "Patroni's synchronous_mode.")] = False,
    max_slot_wal_keep_size: Annotated[str, typer.Option(
        "--max-slot-wal-keep-size", envvar=MAX_SLOT_WAL_KEEP_SIZE_ENV, metavar="SIZE",
        help="How far (MB, GB, TB of WAL) a replica may fall behind before the primary gives its "
             "slot up instead of keeping WAL until its disk is full (the replica then clones "
             "itself again on its next start). Leave the primary's volume room for it.")
    ] = DEFAULT_MAX_SLOT_WAL_KEEP_SIZE,
    tls_dir: Annotated[Path | None, typer.Option(
        "--tls-dir", envvar="SAGAZ_INIT_TLS_DIR", metavar="DIR", file_okay=False,
        show_default=False,
        help="Your own certificates (ca.crt, server.crt, server.key; PEM) instead of the ones "
             "sagaz init generates into tls/ (docker-compose) or k8s/tls/ (Kubernetes). "
             "server.crt must name every service (the error lists what is missing).")] = None,
    backup_snapshot_class: Annotated[str | None, typer.Option(
        "--backup-snapshot-class", envvar="SAGAZ_BACKUP_SNAPSHOT_CLASS", metavar="CLASS",
        show_default=False,
        help="--k8s: daily backups as CloudNativePG volume snapshots with this "
             "VolumeSnapshotClass (`kubectl get volumesnapshotclass`). Without it the "
             "Kubernetes deployment has no backups.")] = None,
    backup_s3_bucket: Annotated[str | None, typer.Option(
        "--backup-s3-bucket", envvar="SAGAZ_BACKUP_S3_BUCKET", metavar="BUCKET",
        show_default=False,
        help="Backups (pgBackRest) to this S3-compatible bucket instead of a named volume; "
             "with --backup-s3-endpoint and --backup-s3-region. The access key goes in .env "
             "(SAGAZ_BACKUP_S3_KEY, SAGAZ_BACKUP_S3_KEY_SECRET), never in the generated "
             "files.")] = None,
    backup_s3_endpoint: Annotated[str | None, typer.Option(
        "--backup-s3-endpoint", envvar="SAGAZ_BACKUP_S3_ENDPOINT", metavar="HOST[:PORT]",
        show_default=False,
        help="The object store's host, e.g. s3.eu-west-1.amazonaws.com or "
             "minio.internal:9000.")] = None,
    backup_s3_region: Annotated[str | None, typer.Option(
        "--backup-s3-region", envvar="SAGAZ_BACKUP_S3_REGION", metavar="REGION",
        show_default=False, help="The bucket's region, e.g. eu-west-1.")] = None,
    force: Annotated[bool, typer.Option(
        "--force", envvar="SAGAZ_INIT_FORCE",
        help="Overwrite existing files. The passwords of an existing .env (k8s/secrets.yaml) "
             "are kept: the running database has them.")] = False,
    rotate_secrets: Annotated[bool, typer.Option(
        "--rotate-secrets", envvar="SAGAZ_INIT_ROTATE_SECRETS",
        help="With --force: generate new passwords instead of keeping the existing ones. A "
             "database already initialized keeps its old passwords until each is changed there "
             "first (see the generated README, \"Rotating a password\").")] = False,
) -> None:
    """Write the files that deploy sagaz on PostgreSQL, with **generated passwords** (no default
password anywhere).

* `sagaz init --with-ha`: docker-compose with a primary, `--replicas` streaming replicas (default
  1), PgBouncer pools pgbouncer-rw (6432, transaction pooling to the primary) and pgbouncer-ro
  (6433, over the replicas), the schema with partitioned tables, Prometheus, exporters and
  Grafana. Passwords go to `.env` (mode 0600). Then: `docker-compose up -d`.
* `sagaz init --k8s --with-ha [--sync]`: the same on Kubernetes under `k8s/`, run by the
  CloudNativePG operator (install it first: `k8s/README.md`): a `Cluster` of 1 + `--replicas`
  instances (default 2) with automatic failover, `Pooler`s pgbouncer-rw and pgbouncer-ro, daily
  volume-snapshot backups (`--backup-snapshot-class`), a partition-maintenance CronJob, the
  worker, NetworkPolicies, PodMonitors; passwords in `k8s/secrets.yaml` (mode 0600). Then:
  `kubectl apply -k k8s/`.
* Without `--with-ha`: the same files for a single PostgreSQL server (both pools point at it).

Existing files are never overwritten without `--force`: the command then lists them and writes
nothing. `--force` keeps the passwords of the existing `.env` / `k8s/secrets.yaml` (the running
database has them), unless `--rotate-secrets`. A `.gitignore` keeps `.env`, `secrets.yaml`,
`tls/` and keys out of version control (merged into an existing one). For a local cluster
without Docker, see `sagaz dev up --ha`.
"""

    def body() -> int:
        if failover:
            from .init_failover import init_failover

            return init_failover(with_ha=with_ha, k8s=k8s, replicas=replicas,
                                 directory=directory, tls_dir=tls_dir, force=force,
                                 rotate_secrets=rotate_secrets, sync=sync)
        given = {"--namespace": namespace, "--storage-size": storage_size,
                 "--backup-snapshot-class": backup_snapshot_class}
        if not k8s and any(value is not None for value in given.values()):
            names = ", ".join(name for name, value in given.items() if value is not None)
            verb = "applies" if names.count("--") == 1 else "apply"
            fail(f"{names} only {verb} to Kubernetes manifests: add --k8s, or leave them out")
        if sync and not (k8s and with_ha):
            fail("--sync applies to the Kubernetes deployment with replicas: add --k8s "
                 "--with-ha (CloudNativePG's synchronous replication), or leave it out")
        if replicas is not None and not with_ha:
            fail("--replicas needs --with-ha (without it, sagaz init writes a single PostgreSQL "
                 "server)")
        count = (replicas if replicas is not None else 2 if k8s else 1) if with_ha else 0
        s3 = _s3_repository(backup_s3_bucket, backup_s3_endpoint, backup_s3_region)
        if s3 is not None and k8s:
            fail("--backup-s3-bucket/--backup-s3-endpoint/--backup-s3-region apply to the "
                 "docker-compose deployment only: on Kubernetes backups are CloudNativePG volume "
                 "snapshots (k8s/README.md, \"Backups\"); leave them out with --k8s")
        kept = _kept_secrets(directory, k8s, keep=force and not rotate_secrets)
        tls = _own_tls(tls_dir, count, k8s, namespace)
        generated: list[Path] = []
        # Kubernetes without --tls-dir: the operator's own certificates, none to make here.
        files = _generate(count, with_ha, k8s, namespace, storage_size, image,
                          max_slot_wal_keep_size, kept.secrets, directory, tls, s3, sync,
                          backup_snapshot_class)
        written = _write(directory, files, force)
        if tls is None and not k8s:
            generated = _generated_tls(directory, count, k8s, namespace)
        written += generated
        _report(directory, written, files, k8s, count, namespace or "sagaz")
        if k8s and backup_snapshot_class is None:
            out.print("no backups: add --backup-snapshot-class CLASS for daily volume snapshots "
                      "(kubectl get volumesnapshotclass)", soft_wrap=True)
        _report_secrets(kept)
        return ExitCode.OK

    execute(body)


def _s3_repository(bucket: str | None, endpoint: str | None,
                   region: str | None) -> S3Repository | None:
    from sagaz.deploy.backup import s3_repository
    from sagaz.errors import SagazError

    try:
        return s3_repository(bucket, endpoint, region)
    except SagazError as exc:
        fail(str(exc))


def _kept_secrets(directory: Path, k8s: bool, *, keep: bool) -> KeptSecrets:
    """The passwords to write: those of the existing secrets file when ``keep``, else new."""
    from sagaz.deploy.bundle import generate_secrets
    from sagaz.deploy.kept_secrets import KeptSecrets, kept_compose_secrets, kept_k8s_secrets
    from sagaz.errors import SagazError

    if not keep:
        return KeptSecrets(generate_secrets(), None, [])
    try:
        if k8s:
            return kept_k8s_secrets(directory / "k8s" / "secrets.yaml")
        return kept_compose_secrets(directory / ".env")
    except SagazError as exc:
        fail(str(exc))


def _tls_names(replicas: int, k8s: bool, namespace: str | None) -> list[str]:
    from sagaz.deploy.compose import tls_names
    from sagaz.deploy.kubernetes import k8s_tls_names

    return k8s_tls_names(namespace or "sagaz") if k8s else tls_names(replicas)


def _tls_dir(directory: Path, k8s: bool) -> Path:
    return directory.absolute() / ("k8s/tls" if k8s else "tls")


def _own_tls(tls_dir: Path | None, replicas: int, k8s: bool,
             namespace: str | None) -> TlsFiles | None:
    """--tls-dir validated before anything is written (exit 2 with one line otherwise)."""
    if tls_dir is None:
        return None
    from sagaz.deploy.tls import deployment_tls
    from sagaz.errors import SagazError

    try:
        return deployment_tls(tls_dir, _tls_names(replicas, k8s, namespace), tls_dir)
    except SagazError as exc:
        fail(str(exc))


def _report_secrets(kept: KeptSecrets) -> None:
    if kept.source is None:
        return
    out.print(f"kept the passwords of {escape(str(kept.source))} (--rotate-secrets generates "
              "new ones)", soft_wrap=True)
    if kept.missing:
        many = len(kept.missing) > 1
        print_warning(f"{kept.source} had no {', '.join(kept.missing)}: generated "
                      f"{'new ones' if many else 'a new one'}; a database already initialized "
                      f"has {'other passwords for these roles' if many else 'another for it'}: "
                      "set the new value there too (ALTER ROLE ... PASSWORD)")


def _generated_tls(directory: Path, replicas: int, k8s: bool,
                   namespace: str | None) -> list[Path]:
    """The certificates sagaz init makes (kept when still valid: a CA clients trust stays)."""
    from sagaz.deploy.tls import deployment_tls

    tls = deployment_tls(_tls_dir(directory, k8s), _tls_names(replicas, k8s, namespace), None)
    return [tls.ca_cert, tls.ca_key, tls.server_cert, tls.server_key]


def _generate(replicas: int, with_ha: bool, k8s: bool, namespace: str | None,
              storage_size: str | None, image: str | None,
              max_slot_wal_keep_size: str, secrets: Secrets, directory: Path,
              tls: TlsFiles | None, s3: S3Repository | None,
              sync: bool = False, snapshot_class: str | None = None) -> list[GeneratedFile]:
    # No database driver needed (tests/acceptance/test_init_without_driver.py).
    from sagaz.deploy import kubernetes
    from sagaz.deploy.bundle import validate_replicas
    from sagaz.deploy.compose import compose_files
    from sagaz.errors import SagazError

    try:
        validate_replicas(replicas, minimum=1 if with_ha else 0)
        if k8s:
            return kubernetes.kubernetes_files(
                replicas, namespace=namespace or kubernetes.DEFAULT_NAMESPACE,
                storage_size=storage_size or kubernetes.DEFAULT_STORAGE_SIZE,
                image=image or kubernetes.DEFAULT_IMAGE, secrets=secrets,
                max_slot_wal_keep_size=max_slot_wal_keep_size, tls=tls, synchronous=sync,
                snapshot_class=snapshot_class)
        source = tls.directory if tls else _tls_dir(directory, k8s)
        return compose_files(replicas, secrets, max_slot_wal_keep_size=max_slot_wal_keep_size,
                             tls_source=str(source) if tls else "./tls",
                             host_ca_cert=str(source / "ca.crt"), backup_s3=s3,
                             **({} if image is None else {"image": image}))
    except SagazError as exc:
        fail(str(exc))


def _write(directory: Path, files: list[GeneratedFile], force: bool) -> list[Path]:
    from sagaz.deploy.bundle import write_files
    from sagaz.errors import SagazError

    try:
        return write_files(directory, files, force=force)
    except SagazError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write into {directory}: {exc.strerror or exc} ({exc.filename or directory})")


def _report(directory: Path, written: list[Path], files: list[GeneratedFile], k8s: bool,
            replicas: int, namespace: str) -> None:
    kind = "Kubernetes manifests" if k8s else "docker-compose files"
    shape = (f"a primary and {replicas} streaming replica{'s' if replicas > 1 else ''}"
             if replicas else "a single PostgreSQL server")
    out.print(f"wrote {len(written)} {kind} for {shape}:")
    modes = [f.mode for f in files] + [0o644, 0o600] * ((len(written) - len(files)) // 2)
    for path, mode in zip(written, modes, strict=True):
        note = "  [yellow](secrets, mode 0600)[/]" if mode == 0o600 else ""
        out.print(f"  {escape(str(path))}{note}", soft_wrap=True)
    where = "" if directory == Path(".") else f"cd {directory} && "
    out.print("\nnext:")
    if k8s:
        from sagaz.deploy.kubernetes import CLUSTER_NAME, OPERATOR_MANIFEST

        target = directory / "k8s"
        out.print("  kubectl apply --server-side -f " + OPERATOR_MANIFEST, soft_wrap=True)
        out.print(f"  kubectl apply -k {escape(str(target))}/", soft_wrap=True)
        out.print(f"  kubectl -n {namespace} wait cluster/{CLUSTER_NAME} --for=condition=Ready "
                  "--timeout=10m")
        out.print(f"  (see {escape(str(target / 'README.md'))}; passwords are in "
                  f"{escape(str(target / 'secrets.yaml'))})", soft_wrap=True)
    else:
        out.print(f"  {escape(where)}docker-compose up -d", soft_wrap=True)
        out.print("  docker-compose logs -f postgres-init")
        out.print(f"  (see {escape(str(directory / 'README.md'))}; passwords are in "
                  f"{escape(str(directory / '.env'))})", soft_wrap=True)
    if not replicas:
        out.print("add --with-ha for streaming replicas and a read pool over them")
