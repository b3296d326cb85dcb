"""`sagaz init` and the secrets it writes: `--force` keeps the passwords the running database
has, `--rotate-secrets` makes new ones, and a `.gitignore` keeps secrets and keys out of version
control without clobbering the user's own."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from init_helpers import _no_sagaz_env, documents, generate, init, load_env

from sagaz.deploy.kept_secrets import ENV_KEYS, SECRET_KEYS

__all__ = ["_no_sagaz_env"]  # the autouse fixture, for this module too


def _k8s_passwords(directory: Path) -> dict[str, str]:
    data = documents(directory / "k8s" / "secrets.yaml")[0]["stringData"]
    return {key: data[key] for key in SECRET_KEYS.values()}


def _env_passwords(directory: Path) -> dict[str, str]:
    env = load_env(directory / ".env")
    return {key: env[key] for key in ENV_KEYS.values()}


def test_force_keeps_the_passwords_and_rotate_secrets_replaces_them(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    generate(capsys, tmp_path, "--with-ha")
    generate(capsys, tmp_path, "--k8s", "--with-ha")
    env, k8s = _env_passwords(tmp_path), _k8s_passwords(tmp_path)
    env_urls = {k: v for k, v in load_env(tmp_path / ".env").items() if k.endswith("_URL")}

    code, out, err = init(capsys, "--dir", str(tmp_path), "--with-ha", "--replicas", "2",
                          "--force")
    assert code == 0, err
    assert f"kept the passwords of {tmp_path / '.env'}" in out
    assert _env_passwords(tmp_path) == env
    assert {k: v for k, v in load_env(tmp_path / ".env").items() if k.endswith("_URL")} == \
        env_urls
    assert "postgres-replica-2" in (tmp_path / "docker-compose.yaml").read_text()  # regenerated

    code, out, err = init(capsys, "--dir", str(tmp_path), "--k8s", "--with-ha", "--replicas",
                          "3", "--force")
    assert code == 0, err
    assert _k8s_passwords(tmp_path) == k8s
    assert "instances: 4" in (tmp_path / "k8s" / "postgresql-cluster.yaml").read_text()
    # What the generated README advises for scaling is what was just done, and safe.
    readme = " ".join((tmp_path / "k8s" / "README.md").read_text().split())
    assert "--replicas N --force` (it keeps the passwords of `secrets.yaml`)" in readme

    for args, passwords, before in ((["--with-ha"], _env_passwords, env),
                                    (["--k8s", "--with-ha"], _k8s_passwords, k8s)):
        code, out, err = init(capsys, "--dir", str(tmp_path), *args, "--force",
                              "--rotate-secrets")
        assert code == 0, err
        assert "kept the passwords" not in out
        after = passwords(tmp_path)
        assert not set(after.values()) & set(before.values())  # every one is new
    for private in (tmp_path / ".env", tmp_path / "k8s" / "secrets.yaml"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_a_password_missing_from_the_existing_file_is_generated_with_a_warning(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    generate(capsys, tmp_path)
    env_file = tmp_path / ".env"
    kept = load_env(env_file)["SAGAZ_APP_PASSWORD"]
    env_file.write_text("\n".join(line for line in env_file.read_text().splitlines()
                                  if not line.startswith("SAGAZ_READER_PASSWORD=")))
    code, _out, err = init(capsys, "--dir", str(tmp_path), "--force")
    assert code == 0, err
    assert load_env(env_file)["SAGAZ_APP_PASSWORD"] == kept
    assert load_env(env_file)["SAGAZ_READER_PASSWORD"]
    assert f"warning: {env_file} had no SAGAZ_READER_PASSWORD: generated a new one" in \
        " ".join(err.split())


def test_an_unreadable_secrets_file_is_one_line_and_nothing_is_written(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    generate(capsys, tmp_path, "--k8s")
    secret = tmp_path / "k8s" / "secrets.yaml"
    secret.write_text("not: a secret\n")
    readme = tmp_path / "k8s" / "README.md"
    readme.unlink()
    code, _out, err = init(capsys, "--dir", str(tmp_path), "--k8s", "--force")
    assert code == 2
    assert f"cannot read the passwords of {secret}" in " ".join(err.split())
    assert "--rotate-secrets" in err and "Traceback" not in err
    assert not readme.exists()


def test_gitignore_lists_secrets_and_keys_and_keeps_the_users_own_lines(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    own = "node_modules/\n.env\n"
    (tmp_path / ".gitignore").write_text(own)
    generate(capsys, tmp_path, "--with-ha")  # an existing .gitignore is no conflict
    generate(capsys, tmp_path, "--k8s")
    compose_ignore = (tmp_path / ".gitignore").read_text()
    assert compose_ignore.startswith(own)
    lines = compose_ignore.splitlines()
    assert [line for line in lines if not line.startswith("#") and line] == \
        ["node_modules/", ".env", "tls/", "*.key"]
    k8s_ignore = (tmp_path / "k8s" / ".gitignore").read_text().splitlines()
    assert {"secrets.yaml", "*.key"} <= set(k8s_ignore)

    code, _out, err = init(capsys, "--dir", str(tmp_path), "--with-ha", "--force")
    assert code == 0, err
    assert (tmp_path / ".gitignore").read_text() == compose_ignore  # nothing appended twice


def test_gitignore_really_keeps_the_secrets_out_of_git(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    git = shutil.which("git")
    assert git is not None, "git is needed for this test (apt-get install git)"
    generate(capsys, tmp_path, "--with-ha")
    generate(capsys, tmp_path, "--k8s", "--with-ha")
    (tmp_path / "ca.key").write_text("key")  # a key of one's own, anywhere
    subprocess.run([git, "init", "-q", str(tmp_path)], check=True)
    ignored = subprocess.run(
        [git, "-C", str(tmp_path), "status", "--porcelain", "--ignored", "--untracked-files=all"],
        check=True, capture_output=True, text=True).stdout.splitlines()
    kept_out = {line[3:] for line in ignored if line.startswith("!!")}
    # (Kubernetes has no k8s/tls/ without --tls-dir: the operator makes its certificates.)
    assert {".env", "k8s/secrets.yaml", "tls/ca.key", "tls/server.key", "ca.key"} <= kept_out
    assert not {p for p in kept_out if not p.startswith(("tls/", "k8s/tls/"))} - {
        ".env", "k8s/secrets.yaml", "ca.key"}, "only secrets and certificates are ignored"
    tracked = {line[3:] for line in ignored if line.startswith("??")}
    assert "docker-compose.yaml" in tracked and "k8s/secrets-example.yaml" in tracked


def test_every_generated_password_has_a_place_it_is_read_back_from() -> None:
    """A new field of Secrets that --force does not read back would be regenerated on every
    --force: the files would then hold a password the running database never had."""
    from dataclasses import fields

    from sagaz.deploy.bundle import Secrets
    from sagaz.deploy.kept_secrets import ENV_KEYS, SECRET_KEYS

    every = {f.name for f in fields(Secrets)}
    assert set(ENV_KEYS) == every
    # Kubernetes: CloudNativePG has no superuser password and its own replication and pool
    # credentials; Grafana is not deployed there. The others are not written at all.
    assert set(SECRET_KEYS) == {"app", "reader"} <= every


def test_force_keeps_the_passwords_of_an_earlier_kubernetes_secrets_file(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A secrets.yaml of the earlier StatefulSet deployment (six passwords in sagaz-postgres):
    the two roles CloudNativePG manages keep theirs, and nothing is reported missing."""
    secret = tmp_path / "k8s" / "secrets.yaml"
    secret.parent.mkdir()
    earlier = {"postgres-password": "p" * 32, "app-password": "a" * 32,
               "reader-password": "r" * 32, "replication-password": "x" * 32,
               "pgbouncer-admin-password": "y" * 32, "pgbouncer-stats-password": "z" * 32}
    secret.write_text("apiVersion: v1\nkind: Secret\nmetadata:\n  name: sagaz-postgres\n"
                      "stringData:\n" + "".join(f'  {k}: "{v}"\n' for k, v in earlier.items()))
    code, out, err = init(capsys, "--dir", str(tmp_path), "--k8s", "--with-ha", "--force")
    assert code == 0, err
    assert f"kept the passwords of {secret}" in out and "warning" not in err
    assert _k8s_passwords(tmp_path) == {"app-password": "a" * 32, "reader-password": "r" * 32}
    roles = {d["metadata"]["name"]: d["stringData"]["password"] for d in documents(secret)[1:]}
    assert roles == {"sagaz-app": "a" * 32, "sagaz-reader": "r" * 32}
