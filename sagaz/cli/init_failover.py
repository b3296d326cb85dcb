"""``sagaz init --with-ha --failover``: the docker-compose deployment with automatic failover
(:mod:`sagaz.deploy.compose_failover`). Its own module: the generator without failover keeps
its options and report."""

from __future__ import annotations

import re
from pathlib import Path

from .common import ExitCode, fail
from .output import escape, out

__all__ = ["init_failover"]


def init_failover(*, with_ha: bool, k8s: bool, replicas: int | None, directory: Path,
                  tls_dir: Path | None, force: bool, rotate_secrets: bool,
                  sync: bool = False) -> int:
    # No database driver needed (tests/acceptance/test_init_without_driver.py).
    from sagaz.deploy.bundle import write_files
    from sagaz.deploy.compose_failover import compose_failover_files, failover_tls_names
    from sagaz.deploy.kept_secrets import kept_compose_secrets
    from sagaz.deploy.patroni import PatroniSettings
    from sagaz.deploy.tls import deployment_tls
    from sagaz.errors import SagazError

    if not with_ha:
        fail("--failover needs --with-ha (automatic failover between several nodes)")
    if k8s:
        fail("--failover is the docker-compose deployment (Patroni + etcd); for Kubernetes use "
             "--k8s --with-ha without it")
    if replicas is not None:
        fail("--failover always has 3 nodes (a leader and 2 replicas): leave --replicas out")
    env_file = directory / ".env"
    keep = force and not rotate_secrets
    try:
        kept = kept_compose_secrets(env_file) if keep else None
        api_password = _kept_api_password(env_file) if keep else None
        source = tls_dir if tls_dir is not None else directory.absolute() / "tls"
        if tls_dir is not None:  # yours: checked before anything is written
            deployment_tls(source, failover_tls_names(), tls_dir)
        files = compose_failover_files(
            kept.secrets if kept else None, api_password=api_password,
            settings=PatroniSettings(synchronous_mode=sync),
            tls_source=str(source) if tls_dir else "./tls",
            host_ca_cert=str(Path(source).absolute() / "ca.crt"))
        written = write_files(directory, files, force=force)
        tls = deployment_tls(source, failover_tls_names(), tls_dir)
    except SagazError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write into {directory}: {exc.strerror or exc} ({exc.filename or directory})")
    if tls_dir is None:
        written += [tls.ca_cert, tls.ca_key, tls.server_cert, tls.server_key]
    out.print(f"wrote {len(written)} docker-compose files for 3 Patroni nodes with automatic "
              "failover (3 etcd members):")
    for path in written:
        secret = path.name in (".env", "ca.key", "server.key")
        out.print(f"  {escape(str(path))}" + ("  [yellow](secrets, mode 0600)[/]" if secret
                                              else ""), soft_wrap=True)
    where = "" if directory == Path(".") else f"cd {directory} && "
    out.print(f"\nnext:\n  {escape(where)}docker-compose build && docker-compose up -d",
              soft_wrap=True)
    out.print(f"  (see {escape(str(directory / 'README.md'))}; passwords are in "
              f"{escape(str(env_file))})", soft_wrap=True)
    return ExitCode.OK


def _kept_api_password(env_file: Path) -> str | None:
    try:
        text = env_file.read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r"^SAGAZ_PATRONI_API_PASSWORD=(\S+)$", text, re.MULTILINE)
    return match[1] if match else None
