"""The passwords of an existing deployment, read back from the ``.env`` or ``secrets.yaml`` that
``sagaz init`` wrote, so that ``sagaz init --force`` regenerates every other file but keeps
them: the running database still has those passwords, and new ones in the files alone would lock
every client out (changing them is rotation: README, "Secrets")."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from sagaz.deploy.bundle import Secrets, generate_secrets
from sagaz.errors import SagazError

__all__ = ["ENV_KEYS", "SECRET_KEYS", "KeptSecrets", "kept_compose_secrets", "kept_k8s_secrets"]

ENV_KEYS = {"postgres": "POSTGRES_PASSWORD", "app": "SAGAZ_APP_PASSWORD",
            "reader": "SAGAZ_READER_PASSWORD", "replication": "SAGAZ_REPLICATION_PASSWORD",
            "pgbouncer_admin": "SAGAZ_PGBOUNCER_ADMIN_PASSWORD",
            "pgbouncer_stats": "SAGAZ_PGBOUNCER_STATS_PASSWORD",
            "grafana_admin": "GRAFANA_ADMIN_PASSWORD", "monitor": "SAGAZ_MONITOR_PASSWORD"}
"""The variable of ``.env`` holding each field of :class:`Secrets`."""
SECRET_KEYS = {"app": "app-password", "reader": "reader-password"}
"""The key of the Kubernetes Secret holding each field it uses: CloudNativePG has no superuser
password (it reaches the superuser through the pod's socket), replicates and runs the pools with
certificates and credentials of its own, and Grafana and the exporters are not deployed there
(the operator's Prometheus scrapes sagaz's own endpoint)."""

_STRING_DATA_LINE = re.compile(
    r"^\s+(?P<key>" + "|".join(SECRET_KEYS.values()) + r"):\s*(?P<value>.*?)\s*$")


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


class KeptSecrets:
    """The secrets to generate files with, and which of them came from the existing file."""

    def __init__(self, secrets: Secrets, source: Path | None, missing: list[str]):
        self.secrets = secrets
        self.source = source
        """The file the passwords were read from; None when there was none (all generated)."""
        self.missing = missing
        """Names (variables or keys) the existing file lacked: newly generated."""


def kept_compose_secrets(env_file: Path) -> KeptSecrets:
    """The passwords of ``env_file`` (a ``.env`` of ``sagaz init``), those it lacks generated."""
    try:
        text = env_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return KeptSecrets(generate_secrets(), None, [])
    except (OSError, UnicodeDecodeError) as exc:
        raise _unreadable(env_file, exc) from exc
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith("#"):
            values[key.strip()] = value.strip()
    return _kept(env_file, {field: values.get(key, "") for field, key in ENV_KEYS.items()},
                 ENV_KEYS)


def kept_k8s_secrets(secret_file: Path) -> KeptSecrets:
    """The passwords of ``secret_file`` (the ``secrets.yaml`` of ``sagaz init --k8s``)."""
    try:
        text = secret_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return KeptSecrets(generate_secrets(), None, [])
    except (OSError, UnicodeDecodeError) as exc:
        raise _unreadable(secret_file, exc) from exc
    # The shape sagaz writes (and a hand edit keeps): `  key: "value"` under stringData. Read
    # line by line rather than with a YAML parser, which sagaz does not otherwise need.
    data: dict[str, str] = {}
    for line in text.splitlines():
        match = _STRING_DATA_LINE.match(line)
        if match:
            data[match["key"]] = _unquote(match["value"])
    if not data:
        raise _unreadable(secret_file, ValueError("no password keys found"))
    values = {field: data.get(key, "") for field, key in SECRET_KEYS.items()}
    return _kept(secret_file, values, SECRET_KEYS)


def _kept(source: Path, values: dict[str, str], names: dict[str, str]) -> KeptSecrets:
    fresh = generate_secrets()
    chosen = {f.name: values.get(f.name) or getattr(fresh, f.name) for f in fields(Secrets)}
    missing = [names[field] for field in names if not values.get(field)]
    return KeptSecrets(Secrets(**chosen), source, missing)


def _unreadable(path: Path, exc: BaseException) -> SagazError:
    return SagazError(
        f"cannot read the passwords of {path} to keep them ({exc}): fix the file, or pass "
        "--rotate-secrets to generate new ones (then set them in the running database too)")
