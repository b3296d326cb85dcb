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
from init_helpers import documents, generate, init, load_env

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


def test_kubernetes_uses_the_operators_certificates_and_verifies_them(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    """Without --tls-dir, CloudNativePG's own CA and server certificate: none generated here,
    the pools' names added to it, every client verifying with the operator's CA."""
    generate(capsys, tmp_path, "--k8s", "--with-ha")
    assert not (tmp_path / "k8s" / "tls").exists()
    secrets = {d["metadata"]["name"]: d for d in documents(tmp_path / "k8s" / "secrets.yaml")}
    assert "sagaz-tls" not in secrets and "sagaz-ca" not in secrets
    cluster = next(d for d in documents(tmp_path / "k8s" / "postgresql-cluster.yaml")
                   if d["kind"] == "Cluster")["spec"]
    assert set(cluster["certificates"]) == {"serverAltDNSNames"}
    assert "pgbouncer-rw.sagaz.svc" in cluster["certificates"]["serverAltDNSNames"]
    for key in ("storage-url", "analytics-url", "database-url"):
        assert secrets["sagaz-postgres"]["stringData"][key].endswith(
            "?sslmode=verify-full&sslrootcert=/etc/sagaz/tls/ca.crt")
    worker = (tmp_path / "k8s" / "sagaz-worker.yaml").read_text()
    assert "secretName: postgresql-ca" in worker


def test_kubernetes_tls_dir_becomes_the_clusters_certificate_cert_manager_shaped(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    from k8s_validation import validate_manifests

    from sagaz.deploy.kubernetes import k8s_tls_names

    own = ensure_certificates(tmp_path / "own", k8s_tls_names("sagaz"))
    generate(capsys, tmp_path / "out", "--k8s", "--with-ha", "--tls-dir", str(own.directory))
    k8s = tmp_path / "out" / "k8s"
    (tmp_path / "scratch").mkdir()
    validate_manifests([k8s / name for name in ("secrets.yaml", "secrets-example.yaml",
                                                "postgresql-cluster.yaml", "sagaz-worker.yaml",
                                                "maintenance-cronjob.yaml", "pod-monitors.yaml")],
                       tmp_path / "scratch")
    secrets = {d["metadata"]["name"]: d for d in documents(k8s / "secrets.yaml")}
    server, ca = secrets["sagaz-tls"], secrets["sagaz-ca"]
    assert server["type"] == ca["type"] == "kubernetes.io/tls"
    assert set(server["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    assert set(ca["data"]) == {"tls.crt", "tls.key"}
    cluster = next(d for d in documents(k8s / "postgresql-cluster.yaml")
                   if d["kind"] == "Cluster")["spec"]
    assert cluster["certificates"] == {"serverTLSSecret": "sagaz-tls",
                                       "serverCASecret": "sagaz-tls"}
    assert "secretName: sagaz-tls" in (k8s / "sagaz-worker.yaml").read_text()
    assert "cert-manager" in (k8s / "README.md").read_text()
    # A certificate without the Cluster's Services is refused, with what it lacks.
    wrong = ensure_certificates(tmp_path / "wrong", ["pgbouncer-rw", "pgbouncer-ro"])
    code, out, err = init(capsys, "--dir", str(tmp_path / "other"), "--k8s", "--with-ha",
                          "--tls-dir", str(wrong.directory))
    assert code == 2 and "has no subjectAltName for postgresql-rw" in err, (out, err)


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
