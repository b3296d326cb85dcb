"""What the docker-compose and Kubernetes generators share: the generated files and how they are
written (never over an existing file without ``force``; secrets with mode 0600), the generated
secrets, input validation, the container images, and the PostgreSQL settings and role names of
the local cluster (:mod:`sagaz.ha.local`), so that the three ways to run stay one configuration.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import quote

from sagaz.errors import SagazError
from sagaz.ha.local import (
    APP_USER,
    MONITOR_USER,
    PGBOUNCER_ADMIN,
    PGBOUNCER_STATS,
    PRIMARY_SETTINGS,
    READER_USER,
    REPLICATION_USER,
    SUPERUSER,
)
from sagaz.ha.wal_settings import DEFAULT_MAX_SLOT_WAL_KEEP_SIZE, wal_retention_settings

__all__ = [
    "APP_USER", "DATABASE", "GeneratedFile", "IMAGES", "MAX_REPLICAS", "MONITOR_USER",
    "PGBOUNCER_ADMIN",
    "PGBOUNCER_STATS", "READER_USER", "REPLICATION_USER", "SUPERUSER", "Secrets", "conflicts",
    "generate_secrets", "server_settings", "url", "validate_image", "validate_namespace",
    "validate_replicas", "validate_storage_size", "write_files",
]

DATABASE = "sagaz"

IMAGES = {
    "postgres": "postgres:16-alpine",
    # The operand image CloudNativePG documents (PostgreSQL 16, Debian bookworm, with the tools
    # its instance manager uses); the Cluster of `sagaz init --k8s`.
    "cnpg_postgres": "ghcr.io/cloudnative-pg/postgresql:16-standard-bookworm",
    # Alpine, runs as uid 70; has no pg_isready, hence the /proc/net/tcp health checks.
    "pgbouncer": "edoburu/pgbouncer:v1.24.1-p0",
    "prometheus": "prom/prometheus:v2.53.0",
    "postgres_exporter": "quay.io/prometheuscommunity/postgres-exporter:v0.15.0",
    # v0.9.0 is the first to read its connection string from the environment.
    "pgbouncer_exporter": "quay.io/prometheuscommunity/pgbouncer-exporter:v0.9.0",
    "grafana": "grafana/grafana:11.2.0",
}
"""Pinned images (bump them here): the same everywhere they appear."""

MAX_REPLICAS = 8
"""PRIMARY_SETTINGS allow 10 WAL senders and slots; a replica's pg_basebackup holds two senders
while it runs, so 8 replicas can (re)start at once."""


@dataclass(frozen=True)
class GeneratedFile:
    path: str
    """Relative to the output directory, with / separators."""
    content: str
    mode: int = 0o644
    merge_lines: bool = False
    """A list of lines (.gitignore) merged into an existing file instead of replacing it: the
    lines it lacks are appended, the user's own are kept, and it never conflicts."""


@dataclass(frozen=True)
class Secrets:
    """Generated passwords (secrets.token_urlsafe: URL-, shell-, YAML- and ini-safe)."""

    postgres: str
    app: str
    reader: str
    replication: str
    pgbouncer_admin: str
    grafana_admin: str
    pgbouncer_stats: str
    monitor: str
    """postgres_exporter's role (docker-compose; pg_monitor only)."""


def generate_secrets() -> Secrets:
    return Secrets(*(secrets.token_urlsafe(24) for _ in fields(Secrets)))


def url(user: str, password: str, host: str, port: int, dbname: str = DATABASE) -> str:
    return (f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/"
            f"{quote(dbname, safe='')}")


def server_settings(max_slot_wal_keep_size: str = DEFAULT_MAX_SLOT_WAL_KEEP_SIZE) -> list[str]:
    """PRIMARY_SETTINGS and the WAL retention of the local cluster as ``postgres -c name=value``
    arguments (every node gets them: a replica may become the primary)."""
    settings = {**PRIMARY_SETTINGS, **wal_retention_settings(max_slot_wal_keep_size)}
    return [f"{name}={_unquote(value)}" for name, value in settings.items()]


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    return value


# -- validation (messages say what to change) ------------------------------------------------------

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^(?P<number>[0-9]+(\.[0-9]+)?)(?P<unit>Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")


def validate_replicas(replicas: int, *, minimum: int) -> None:
    if not minimum <= replicas <= MAX_REPLICAS:
        raise SagazError(
            f"--replicas must be between {minimum} and {MAX_REPLICAS}, not {replicas}"
            + (" (a deployment with --with-ha has at least one streaming replica; leave out "
               "--with-ha for a single PostgreSQL server)" if replicas < minimum else
               " (the primary allows 10 WAL senders; each replica holds one, two while its "
               "pg_basebackup runs)"))


def validate_namespace(namespace: str) -> None:
    if len(namespace) > 63 or not _DNS_LABEL.match(namespace):
        raise SagazError(
            f"--namespace {namespace!r} is not a valid Kubernetes namespace: use at most 63 "
            "lowercase letters, digits and '-', starting and ending with a letter or digit "
            "(e.g. sagaz or sagaz-prod)")
    if namespace.startswith("kube-") or namespace == "default":
        # namespace.yaml makes the namespace sagaz's own: it sets Pod Security labels on it, the
        # network policies sit in it, and `kubectl delete -k` deletes it. Kubernetes reserves
        # kube-* for its system namespaces; `default` is shared by whatever else runs there.
        raise SagazError(
            f"--namespace {namespace!r} is a namespace of Kubernetes itself, shared with other "
            "workloads: the generated files take over their namespace (Pod Security labels, "
            "`kubectl delete -k` deletes it); choose one of its own, e.g. sagaz or sagaz-prod")


def validate_storage_size(size: str) -> None:
    match = _QUANTITY.match(size)
    if match is None or float(match["number"]) == 0:
        raise SagazError(
            f"--storage-size {size!r} is not a Kubernetes storage quantity: use a positive "
            "number with a unit such as 10Gi, 500Mi or 1Ti")


def validate_image(image: str) -> None:
    if not _IMAGE.match(image):
        raise SagazError(
            f"--image {image!r} is not a container image reference: use e.g. sagaz:latest or "
            "registry.example.com/team/sagaz:1.2.0")


# -- writing ---------------------------------------------------------------------------------------

def conflicts(directory: Path, files: list[GeneratedFile]) -> list[Path]:
    """The files that would be overwritten (existing paths, also directories in the way)."""
    return [directory / f.path for f in files
            if os.path.lexists(directory / f.path) and not f.merge_lines]


def write_files(directory: Path, files: list[GeneratedFile], *, force: bool) -> list[Path]:
    """Write ``files`` under ``directory``. Without ``force``, nothing is written when any of them
    exists already (:class:`SagazError` naming them all)."""
    existing = conflicts(directory, files)
    in_the_way = [p for p in existing if p.is_dir() and not p.is_symlink()]
    if in_the_way:
        raise SagazError(f"{', '.join(map(str, in_the_way))}: a directory where sagaz init "
                         "writes a file; move it away or choose another --dir")
    if existing and not force:
        names = ", ".join(str(p) for p in existing)
        raise SagazError(f"{len(existing)} file{'s' if len(existing) > 1 else ''} already "
                         f"exist{'' if len(existing) > 1 else 's'}: {names}; nothing was written. "
                         "Pass --force to overwrite them (the passwords of an existing .env or "
                         "secrets.yaml are kept unless --rotate-secrets), or choose another "
                         "--dir")
    written = []
    for generated in files:
        path = directory / generated.path
        path.parent.mkdir(parents=True, exist_ok=True)
        if generated.merge_lines and path.is_file() and not path.is_symlink():
            _merge_lines(path, generated.content)
            written.append(path)
            continue
        if path.is_symlink() or path.exists():
            path.unlink()  # a fresh inode: never write secrets through a link or looser mode
        # Created with its final mode, so a secret is never readable by others, not even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, generated.mode)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(generated.content)
        path.chmod(generated.mode)  # the umask may have removed bits (0755 scripts)
        written.append(path)
    return written


def _merge_lines(path: Path, content: str) -> None:
    """Append to ``path`` the lines of ``content`` it does not have yet (comments only when
    something is appended)."""
    existing = path.read_text(encoding="utf-8")
    have = {line.strip() for line in existing.splitlines()}
    missing = [line for line in content.splitlines()
               if line.strip() and not line.startswith("#") and line.strip() not in have]
    if not missing:
        return
    comments = [line for line in content.splitlines() if line.startswith("#")]
    separator = "" if not existing or existing.endswith("\n") else "\n"
    with path.open("a", encoding="utf-8") as out:
        out.write(separator + "\n".join(["", *comments, *missing]) + "\n")
