"""`sagaz init` and TLS: the certificates it generates (private modes, names of every service, kept
by --force), bring-your-own --tls-dir (validated, one-line exit-2 errors), verify-full URLs in
.env, and tls-setup.sh, run for real, handing the key to the container's user."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from test_init import documents, generate, init, load_env

from sagaz.tls import certificate_names, ensure_certificates


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_compose_certificates_are_private_name_every_service_and_survive_force(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    deploy = generate(capsys, tmp_path / "deploy", "--with-ha", "--replicas", "2")
    tls = deploy / "tls"
    assert _mode(tls) == 0o700
    assert _mode(tls / "ca.key") == 0o600 and _mode(tls / "server.key") == 0o600
    assert set(certificate_names(tls / "server.crt")) >= {
        "postgres-primary", "postgres-replica", "postgres-replica-2", "pgbouncer-rw",
        "pgbouncer-ro", "localhost", "127.0.0.1"}
    env = load_env(deploy / ".env")
    for key in ("SAGAZ_STORAGE_URL", "SAGAZ_ANALYTICS_URL", "SAGAZ_DATABASE_URL"):
        assert env[key].endswith(f"?sslmode=verify-full&sslrootcert={tls / 'ca.crt'}"), env[key]
    hba = (deploy / "init-primary.sh").read_text()
    assert "hostssl   all" in hba and "hostnossl all          all                  all        " \
        "reject" in hba
    assert "\nhost " not in hba
    ca = (tls / "ca.crt").read_bytes()
    generate(capsys, tmp_path / "deploy", "--with-ha", "--replicas", "2", "--force")
    assert (tls / "ca.crt").read_bytes() == ca, "a CA clients already trust is kept"


def test_bring_your_own_tls_dir_is_mounted_as_it_is(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    own = ensure_certificates(tmp_path / "own", ["postgres-primary", "postgres-replica",
                                                 "pgbouncer-rw", "pgbouncer-ro", "localhost",
                                                 "127.0.0.1"])
    deploy = generate(capsys, tmp_path / "deploy", "--with-ha", "--tls-dir", str(own.directory))
    assert not (deploy / "tls").exists()
    compose = (deploy / "docker-compose.yaml").read_text()
    assert f"{own.directory}:/sagaz/tls-source:ro" in compose
    assert load_env(deploy / ".env")["SAGAZ_STORAGE_URL"].endswith(
        f"sslrootcert={own.ca_cert}")


@pytest.mark.parametrize(("damage", "message"), [
    ("missing", "server.key is missing"),
    ("garbage", "is not an unencrypted PEM private key"),
    ("names", "has no subjectAltName for postgres-replica"),
])
def test_a_bad_tls_dir_exits_2_with_one_line_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, damage: str, message: str,
) -> None:
    names = ["postgres-primary", "pgbouncer-rw", "pgbouncer-ro", "localhost", "127.0.0.1"]
    own = ensure_certificates(tmp_path / "own", names + ([] if damage == "names" else
                                                         ["postgres-replica"]))
    if damage == "missing":
        own.server_key.unlink()
    elif damage == "garbage":
        own.server_key.write_text("-----BEGIN PRIVATE KEY-----\nnope\n")
    code, out, err = init(capsys, "--dir", str(tmp_path / "deploy"), "--with-ha",
                          "--tls-dir", str(own.directory))
    assert code == 2, (out, err)
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert not (tmp_path / "deploy").exists()


def test_kubernetes_tls_secrets_are_mounted_and_cert_manager_shaped(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    generate(capsys, tmp_path, "--k8s", "--with-ha")
    secrets = {d["metadata"]["name"]: d for d in documents(tmp_path / "k8s" / "secrets.yaml")}
    server, ca = secrets["sagaz-tls"], secrets["sagaz-ca"]
    assert server["type"] == ca["type"] == "kubernetes.io/tls"
    assert set(server["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    assert set(ca["data"]) == {"tls.crt", "tls.key"}
    database = secrets["sagaz-postgres"]["stringData"]
    for key in ("storage-url", "analytics-url", "database-url"):
        assert database[key].endswith("?sslmode=verify-full&sslrootcert=/etc/sagaz/tls/ca.crt")
    manifests = (tmp_path / "k8s" / "postgresql-ha.yaml").read_text() + (
        tmp_path / "k8s" / "pgbouncer.yaml").read_text()
    assert manifests.count("secretName: sagaz-tls") >= 3  # StatefulSet, both pools
    assert "ssl=on" in manifests
    assert "cert-manager" in (tmp_path / "k8s" / "README.md").read_text()


@pytest.mark.skipif(os.getuid() != 0, reason="tls-setup.sh hands files over as root")
def test_tls_setup_hands_the_key_to_the_container_user(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    """What the containers do at start, run for real: as root, copy the certificates for the
    service user (key 0600), then run the command as that user."""
    from sagaz.ha.osuser import service_user

    deploy = generate(capsys, tmp_path / "deploy", "--with-ha")
    user = service_user()
    target = tmp_path / "run" / "tls"
    tmp_path.chmod(0o755)
    result = subprocess.run(
        ["/bin/sh", str(deploy / "tls-setup.sh"), "/bin/sh", "-c", "id -un"],
        env={**os.environ, "SAGAZ_TLS_SOURCE": str(deploy / "tls"),
             "SAGAZ_TLS_DIR": str(target), "SAGAZ_RUN_AS": user.name},
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == user.name
    assert _mode(target) == 0o700 and _mode(target / "server.key") == 0o600
    assert (target / "server.key").stat().st_uid == user.uid
    shutil.rmtree(tmp_path / "run")
    missing = subprocess.run(
        ["/bin/sh", str(deploy / "tls-setup.sh"), "true"],
        env={**os.environ, "SAGAZ_TLS_SOURCE": str(tmp_path / "none"),
             "SAGAZ_TLS_DIR": str(target)}, capture_output=True, text=True, timeout=30)
    assert missing.returncode == 2 and "ca.crt is missing" in missing.stderr
