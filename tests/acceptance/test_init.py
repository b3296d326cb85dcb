"""`sagaz init [--k8s] [--with-ha]`: the generated deployments, validated offline (there is no
Docker engine nor Kubernetes here) with the real tools: `docker-compose config`, the compose-spec
JSON schema, `kubernetes-validate --strict`; their PgBouncer configurations loaded by a real
PgBouncer; their SQL and scripts run against a real PostgreSQL (the local cluster).

A test that needs a missing tool fails under CI=true and is skipped elsewhere.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from privilege_probes import (
    assert_app_role_is_confined,
    assert_reader_is_least_privileged,
    create_foreign_table,
)

from sagaz.cli import main
from sagaz.storage.sql import migrations

COMPOSE_SERVICES = {"postgres-primary", "postgres-init", "pgbackrest-backup", "pgbouncer-rw",
                    "pgbouncer-ro",
                    "sagaz-worker", "prometheus", "postgres-exporter", "pgbouncer-exporter",
                    "pgbouncer-exporter-ro", "grafana"}
K8S_MANIFESTS = ["namespace.yaml", "secrets.yaml", "secrets-example.yaml", "postgresql-ha.yaml",
                 "pgbouncer.yaml", "maintenance-cronjob.yaml", "pgbackrest-backup.yaml",
                 "sagaz-worker.yaml",
                 "network-policies.yaml", "grafana-dashboards.yaml"]
# Custom resources (the Prometheus Operator's): kubernetes-validate has no schema for them;
# tests/acceptance/test_init_monitoring.py validates them.
K8S_CRD_MANIFESTS = ["prometheus-rules.yaml"]
# A weak or well-known password: user:password@ in URLs, or a *PASSWORD* key set to one.
WEAK = re.compile(
    r"(?im)(postgres:postgres@|://[^/\s:@]+:(password|postgres|changeme|secret|admin|sagaz)@"
    r"|password[\"']?\s*[:=]\s*[\"']?(password|postgres|changeme|change_me|secret|admin|sagaz)"
    r"[\"']?\s*$)")


def require_tool(path: str | None, what: str) -> str:
    if path and os.path.exists(path):
        return path
    message = f"{what} is not installed"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


def init(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["init", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def generate(capsys: pytest.CaptureFixture[str], directory: Path, *args: str) -> Path:
    code, out, err = init(capsys, "--dir", str(directory), *args)
    assert code == 0, (out, err)
    return directory


def load_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if line and not line.startswith("#"))
    return {k: v for k, v in pairs}


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(autouse=True)
def _no_sagaz_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SAGAZ_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "400")


# -- docker-compose --------------------------------------------------------------------------------

@pytest.mark.parametrize("replicas", [None, "1", "3"])
def test_compose_files_pass_docker_compose_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, replicas: str | None,
) -> None:
    tool = require_tool(shutil.which("docker-compose"), "docker-compose (apt-get install "
                                                         "docker-compose)")
    args = ["--with-ha", "--replicas", replicas] if replicas else []
    directory = generate(capsys, tmp_path / "deploy", *args)
    result = subprocess.run([tool, "config", "-q"], cwd=directory, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr

    compose = yaml.safe_load((directory / "docker-compose.yaml").read_text())
    services = compose["services"]
    count = int(replicas or 0)
    names = ["postgres-replica"] + [f"postgres-replica-{i}" for i in range(2, count + 1)]
    exporters = {n.replace("postgres-", "postgres-exporter-", 1) for n in names[:count]}
    assert set(services) == COMPOSE_SERVICES | set(names[:count]) | exporters
    for name in ["postgres-primary", *names[:count]]:
        assert services[name]["image"] == "sagaz/postgres-pgbackrest:16-alpine"
        assert services[name]["build"] == "./pgbackrest"
        assert "pg_isready" in " ".join(services[name]["healthcheck"]["test"])
    for name in ["postgres-primary", *names[:count]]:
        # TLS: tls-setup.sh copies the key for the server's user; ssl on with it.
        assert services[name]["entrypoint"] == ["/bin/sh", "/sagaz/tls-setup.sh"]
        command = services[name]["command"]
        assert "ssl=on" in command and "ssl_key_file=/tmp/sagaz-tls/server.key" in command
        assert "./tls:/sagaz/tls-source:ro" in services[name]["volumes"] or any(
            v.endswith("/tls:/sagaz/tls-source:ro") for v in services[name]["volumes"])
    for i, name in enumerate(names[:count], start=1):
        replica = services[name]
        # Root only for tls-setup.sh, which then runs everything as postgres.
        assert "user" not in replica and replica["environment"]["SAGAZ_RUN_AS"] == "postgres"
        assert replica["environment"]["PGSSLMODE"] == "verify-full"
        assert replica["environment"]["SAGAZ_REPLICATION_SLOT"] == f"replica_{i}"
        assert replica["depends_on"]["postgres-primary"]["condition"] == "service_healthy"
        assert replica["ports"] == [f"127.0.0.1:{5432 + i}:5432"]
    assert services["postgres-init"]["depends_on"] == {
        "postgres-primary": {"condition": "service_healthy"}}
    assert services["pgbouncer-rw"]["ports"] == ["127.0.0.1:6432:6432"]
    assert services["pgbouncer-ro"]["ports"] == ["127.0.0.1:6433:6433"]
    ro_ini = (directory / "pgbouncer" / "pgbouncer-ro.ini").read_text()
    backends = ",".join(names[:count]) or "postgres-primary"
    assert f"sagaz = host={backends} port=5432 dbname=sagaz" in ro_ini
    assert "host=postgres-primary " in (directory / "pgbouncer" / "pgbouncer-rw.ini").read_text()

    # Without .env there is no password: docker-compose refuses instead of using a default.
    (directory / ".env").unlink()
    result = subprocess.run([tool, "config", "-q"], cwd=directory, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr or "is missing" in result.stderr


def test_compose_file_matches_the_compose_spec_schema(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    # No PyPI package ships the schema as data except docker-compose 1.x itself (the Debian
    # package installs the same compose/config/compose_spec.json): use that one, vendor nothing.
    import jsonschema

    found = sorted(glob.glob("/usr/lib/python3*/dist-packages/compose/config/compose_spec.json"))
    schema_path = require_tool(found[-1] if found else None,
                               "the compose-spec schema (apt-get install docker-compose)")
    schema = json.loads(Path(schema_path).read_text())
    for args in ([], ["--with-ha", "--replicas", "2"]):
        directory = generate(capsys, tmp_path / f"d{len(args)}", *args)
        compose = yaml.safe_load((directory / "docker-compose.yaml").read_text())
        validator = jsonschema.Draft201909Validator(schema)
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
        assert errors == []


# -- Kubernetes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [[], ["--with-ha"], ["--with-ha", "--replicas", "4",
                                                      "--namespace", "prod-saga",
                                                      "--storage-size", "50Gi",
                                                      "--image", "reg.example/app:1.2"]])
def test_kubernetes_manifests_pass_strict_validation(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str],
) -> None:
    tool = require_tool(str(Path(sys.executable).parent / "kubernetes-validate"),
                        "kubernetes-validate (pip install -e '.[dev]')")
    directory = generate(capsys, tmp_path, "--k8s", *args) / "k8s"
    result = subprocess.run([tool, "--strict", "--quiet",
                             *(str(directory / name) for name in K8S_MANIFESTS)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr

    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert set(kustomization["resources"]) == set(K8S_MANIFESTS + K8S_CRD_MANIFESTS) - {
        "secrets-example.yaml"}
    assert sorted(p.name for p in directory.glob("*.yaml")) == sorted(
        [*K8S_MANIFESTS, *K8S_CRD_MANIFESTS, "kustomization.yaml"])

    namespace = args[args.index("--namespace") + 1] if "--namespace" in args else "sagaz"
    replicas = (int(args[args.index("--replicas") + 1]) if "--replicas" in args
                else 2 if "--with-ha" in args else 0)
    resources = {(d["kind"], d["metadata"]["name"]): d
                 for name in K8S_MANIFESTS if name != "secrets-example.yaml"
                 for d in documents(directory / name)}
    assert kustomization["namespace"] == namespace
    for (kind, _), resource in resources.items():
        if kind != "Namespace":
            assert resource["metadata"]["namespace"] == namespace
    _check_kubernetes_shape(resources, replicas, args)


def _check_kubernetes_shape(resources: dict[tuple[str, str], dict[str, Any]], replicas: int,
                            args: list[str]) -> None:
    sts = resources["StatefulSet", "postgresql"]
    assert sts["spec"]["replicas"] == 1 + replicas
    size = args[args.index("--storage-size") + 1] if "--storage-size" in args else "10Gi"
    claim = sts["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["resources"]["requests"]["storage"] == size
    assert [c["name"] for c in sts["spec"]["template"]["spec"]["initContainers"]] == [
        "bootstrap", "role-label"]
    assert resources["Service", "postgresql-primary"]["spec"]["selector"][
        "statefulset.kubernetes.io/pod-name"] == "postgresql-0"
    assert resources["Service", "postgresql-read"]["spec"]["selector"][
        "sagaz.io/role"] == "replica"
    assert resources["Role", "postgresql-role-label"]["rules"][0]["resourceNames"] == [
        f"postgresql-{i}" for i in range(1 + replicas)]
    assert resources["Service", "pgbouncer-rw"]["spec"]["ports"][0]["port"] == 6432
    assert resources["Service", "pgbouncer-ro"]["spec"]["ports"][0]["port"] == 6433
    hpa = resources["HorizontalPodAutoscaler", "pgbouncer-ro"]
    assert (hpa["apiVersion"], hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (
        "autoscaling/v2", 2, 10)
    ini = resources["ConfigMap", "pgbouncer-config"]["data"]["pgbouncer-ro.ini"]
    assert f"host={'postgresql-read' if replicas else 'postgresql-primary'} " in ini
    cron = resources["CronJob", "partition-maintenance"]
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    # One table per transaction (a psql -c each): never every table's locks at once.
    command = pod["containers"][0]["command"]
    assert [command[i + 1] for i, word in enumerate(command) if word == "-c"] == [
        f"SELECT count(*) FROM maintain_all_partitions('{table}')"
        for table in ("saga_audit_log", "saga_executions", "saga_outbox")]
    image = args[args.index("--image") + 1] if "--image" in args else "sagaz:latest"
    worker = resources["Deployment", "sagaz-worker"]["spec"]["template"]["spec"]
    assert worker["containers"][0]["image"] == image
    assert worker["containers"][0]["command"] == ["sagaz", "worker", "--metrics-port", "9464",
                                                  "--metrics-host", "0.0.0.0"]
    assert {name for kind, name in resources if kind == "PodDisruptionBudget"} == {
        "postgresql", "pgbouncer-rw", "pgbouncer-ro"}
    assert {name for kind, name in resources if kind == "NetworkPolicy"} == {
        "postgresql-ingress", "pgbouncer-rw-ingress", "pgbouncer-ro-ingress"}
    for (kind, name), resource in resources.items():
        template = _pod_template(kind, resource)
        if template is None:
            continue
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in spec.get("initContainers", []) + spec["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name


def _pod_template(kind: str, resource: dict[str, Any]) -> dict[str, Any] | None:
    if kind in ("StatefulSet", "Deployment", "Job"):
        template: dict[str, Any] = resource["spec"]["template"]
        return template
    if kind == "CronJob":
        template = resource["spec"]["jobTemplate"]["spec"]["template"]
        return template
    return None


# -- writing: --force, invalid input, secrets ------------------------------------------------------

def test_existing_files_are_kept_without_force(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    generate(capsys, tmp_path, "--with-ha")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    (tmp_path / "README.md").unlink()
    code, out, err = init(capsys, "--dir", str(tmp_path), "--with-ha")
    assert code == 2
    assert "docker-compose.yaml" in err and ".env" in err and "--force" in err
    assert "nothing was written" in err
    assert not (tmp_path / "README.md").exists()
    assert all(p.read_bytes() == content for p, content in before.items() if p.exists())

    code, out, err = init(capsys, "--dir", str(tmp_path), "--with-ha", "--force")
    assert code == 0, err
    assert (tmp_path / "README.md").exists()
    assert (tmp_path / ".env").read_bytes() == before[tmp_path / ".env"]  # passwords kept
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600
    for path in before:
        assert str(path) in out  # every file written is listed

    # Kubernetes manifests go to k8s/ and do not collide with the compose files.
    code, out, err = init(capsys, "--dir", str(tmp_path), "--k8s", "--with-ha")
    assert code == 0, err
    assert "kubectl apply -k" in out


@pytest.mark.parametrize(("args", "needle"), [
    (["--with-ha", "--replicas", "0"], "--replicas must be between 1 and 8"),
    (["--with-ha", "--replicas", "9"], "--replicas must be between 1 and 8"),
    (["--replicas", "2"], "--replicas needs --with-ha"),
    (["--k8s", "--namespace", "Not_Valid"], "not a valid Kubernetes namespace"),
    (["--k8s", "--namespace", "x" * 64], "not a valid Kubernetes namespace"),
    (["--k8s", "--namespace", "kube-system"], "a namespace of Kubernetes itself"),
    (["--k8s", "--namespace", "kube-public"], "a namespace of Kubernetes itself"),
    (["--k8s", "--namespace", "kube-node-lease"], "a namespace of Kubernetes itself"),
    (["--k8s", "--namespace", "default"], "choose one of its own"),
    (["--k8s", "--storage-size", "10GB"], "use a positive number with a unit such as 10Gi"),
    (["--k8s", "--storage-size", "0Gi"], "use a positive number with a unit such as 10Gi"),
    (["--k8s", "--image", "bad image"], "not a container image reference"),
    (["--namespace", "prod"], "--namespace only applies to Kubernetes manifests: add --k8s"),
    (["--max-slot-wal-keep-size", "4 apples"], "'4 apples' is not a WAL size: use a whole "
                                               "number of MB, GB or TB"),
    (["--k8s", "--max-slot-wal-keep-size", "0MB"], "between 1MB and 2047TB"),
])
def test_invalid_options_say_what_to_change(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], needle: str,
) -> None:
    code, out, err = init(capsys, "--dir", str(tmp_path / "out"), *args)
    assert code == 2, (out, err)
    assert needle in " ".join(err.split()), err
    assert not (tmp_path / "out").exists()


def test_options_from_environment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SAGAZ_INIT_DIR", str(tmp_path))
    monkeypatch.setenv("SAGAZ_INIT_K8S", "1")
    monkeypatch.setenv("SAGAZ_INIT_WITH_HA", "1")
    monkeypatch.setenv("SAGAZ_INIT_REPLICAS", "3")
    monkeypatch.setenv("SAGAZ_K8S_NAMESPACE", "from-env")
    code, _out, err = init(capsys)
    assert code == 0, err
    sts = next(d for d in documents(tmp_path / "k8s" / "postgresql-ha.yaml")
               if d["kind"] == "StatefulSet")
    assert (sts["metadata"]["namespace"], sts["spec"]["replicas"]) == ("from-env", 4)


def _postgres_args(directory: Path) -> dict[str, list[str]]:
    """The `-c name=value` settings of each PostgreSQL server, compose service or Kubernetes
    container, of a generated deployment."""
    found: dict[str, list[str]] = {}
    compose = directory / "docker-compose.yaml"
    if compose.exists():
        for name, service in yaml.safe_load(compose.read_text())["services"].items():
            if name.startswith(("postgres-primary", "postgres-replica")):
                found[name] = service["command"]
    manifest = directory / "k8s" / "postgresql-ha.yaml"
    if manifest.exists():
        sts = next(d for d in documents(manifest) if d["kind"] == "StatefulSet")
        (container,) = sts["spec"]["template"]["spec"]["containers"]
        found["statefulset"] = container["args"]
    return {name: [a for a in args if "=" in a] for name, args in found.items()}


def test_every_postgresql_server_caps_the_wal_kept_for_replicas(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """max_slot_wal_keep_size is set, and the same on every server of compose, Kubernetes and the
    local cluster: a replica that stays down cannot fill the primary's disk."""
    from sagaz.ha.local import ClusterState, LocalCluster

    def local_settings(size: str) -> list[str]:
        state = ClusterState(25432, "sagaz", ["node0"], "node0", "/nonexistent", size)
        node = LocalCluster(tmp_path / "local", state).node("node0")
        return [f"{k}={v.strip(chr(39))}" for k, v in node.settings.items()
                if k in ("max_slot_wal_keep_size", "wal_keep_size")]

    default = generate(capsys, tmp_path / "default", "--with-ha", "--replicas", "2")
    generate(capsys, default, "--k8s", "--with-ha")
    servers = _postgres_args(default)
    assert set(servers) == {"postgres-primary", "postgres-replica", "postgres-replica-2",
                            "statefulset"}
    for args in servers.values():
        assert "max_slot_wal_keep_size=4GB" in args and "wal_keep_size=256MB" in args
        assert [a for a in args if "wal_keep_size" in a] == local_settings("4GB")

    monkeypatch.setenv("SAGAZ_MAX_SLOT_WAL_KEEP_SIZE", "100mb")
    small = generate(capsys, tmp_path / "small", "--with-ha")
    generate(capsys, small, "--k8s", "--max-slot-wal-keep-size", "100MB")
    for args in _postgres_args(small).values():
        # wal_keep_size never above the cap: PostgreSQL keeps the larger of the two.
        assert [a for a in args if "wal_keep_size" in a] == [
            "max_slot_wal_keep_size=100MB", "wal_keep_size=100MB"] == local_settings("100MB")
    for readme in (small / "README.md", small / "k8s" / "README.md"):
        assert "`max_slot_wal_keep_size` (100MB" in " ".join(readme.read_text().split())


def test_secrets_are_generated_private_and_nowhere_else(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    generate(capsys, tmp_path, "--with-ha", "--replicas", "2")
    generate(capsys, tmp_path, "--k8s", "--with-ha")
    env = load_env(tmp_path / ".env")
    compose_secrets = {v for k, v in env.items() if k.endswith("_PASSWORD")}
    k8s_secret = documents(tmp_path / "k8s" / "secrets.yaml")[0]["stringData"]
    k8s_secrets = {v for k, v in k8s_secret.items() if k.endswith("-password")}
    assert len(compose_secrets) == 8 and len(k8s_secrets) == 6
    assert all(len(s) >= 32 for s in compose_secrets | k8s_secrets)
    assert not compose_secrets & k8s_secrets  # every run generates new ones
    assert all(f":{k8s_secret['app-password']}@" in k8s_secret[key]
               for key in ("storage-url", "database-url"))
    assert f":{env['SAGAZ_APP_PASSWORD']}@localhost:6432/" in env["SAGAZ_STORAGE_URL"]

    private = {tmp_path / ".env", tmp_path / "k8s" / "secrets.yaml",
               *(tmp_path / d / "tls" / key for d in (".", "k8s")
                 for key in ("ca.key", "server.key"))}
    example = documents(tmp_path / "k8s" / "secrets-example.yaml")[0]["stringData"]
    assert set(example) == set(k8s_secret) and set(example.values()) == {""}
    for path in (p for p in tmp_path.rglob("*") if p.is_file()):
        text = path.read_text()
        assert not WEAK.search(text), (path, WEAK.search(text))
        mode = stat.S_IMODE(path.stat().st_mode)
        if path in private:
            assert mode == 0o600, path
        else:
            assert mode == (0o755 if path.suffix == ".sh" else 0o644), path
            leaked = [s for s in compose_secrets | k8s_secrets if s in text]
            assert not leaked, f"a generated password is in {path}"


def test_schema_files_are_the_migrations(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    generate(capsys, tmp_path, "--with-ha")
    part = tmp_path / "partitioning"
    m1, m2 = migrations("postgresql")[:2]
    assert (part / "001_create_partitioned_tables.sql").read_text() == m1.sql
    split = (part / "002_partition_maintenance_functions.sql").read_text()
    head = split[: split.index("-- The initial partitions are created by")].rstrip()
    assert m2.sql.startswith(head)
    assert "maintain_all_partitions();" not in m2.sql[len(head):].replace(
        "SELECT count(*) FROM maintain_all_partitions();", "")
    assert (part / "003_initial_partitions.sql").read_text().rstrip().endswith(
        "SELECT * FROM maintain_all_partitions();")


# -- the generated pgbouncer.ini files in a real PgBouncer ---------------------------------------

@pytest.fixture
def service_dir() -> Iterator[Path]:
    """A directory the unprivileged service user (postgres, when the tests run as root) can use."""
    directory = Path(tempfile.mkdtemp(prefix="sagaz-test-init-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("role", ["rw", "ro"])
def test_generated_pgbouncer_ini_runs_in_a_real_pgbouncer(
    capsys: pytest.CaptureFixture[str], service_dir: Path, role: str,
) -> None:
    from sagaz.ha.osuser import service_user

    require_tool(shutil.which("pgbouncer") or "/usr/sbin/pgbouncer", "pgbouncer")
    psql = require_tool(shutil.which("psql"), "psql")
    generate(capsys, service_dir / "deploy", "--with-ha")
    env = load_env(service_dir / "deploy" / ".env")
    run = service_dir / "run"
    run.mkdir()
    port = free_port()
    ini = (service_dir / "deploy" / "pgbouncer" / f"pgbouncer-{role}.ini").read_text()
    # Adapted only in address, port and the paths of the auth file and certificates (what
    # tls-setup.sh does in the container: a copy of tls/ for PgBouncer's user).
    adapted = (ini.replace("listen_addr = 0.0.0.0", "listen_addr = 127.0.0.1")
               .replace(f"listen_port = {6432 if role == 'rw' else 6433}", f"listen_port = {port}")
               .replace("auth_file = /tmp/pgbouncer/userlist.txt",
                        f"auth_file = {run}/auth/userlist.txt")
               .replace("/tmp/sagaz-tls/", f"{run}/tls/"))
    assert adapted.count(str(run)) == 1 + 4 and f"listen_port = {port}" in adapted
    assert "client_tls_sslmode = require" in adapted
    (run / "pgbouncer.ini").write_text(adapted)
    shutil.copytree(service_dir / "deploy" / "tls", run / "tls")
    user = service_user()
    user.own(run, run / "pgbouncer.ini")
    tls = {"PGSSLMODE": "verify-full",
           "PGSSLROOTCERT": str(service_dir / "deploy" / "tls" / "ca.crt")}
    start_env = {**user.env(), "PATH": f"/usr/sbin:{os.environ['PATH']}",
                 "PGBOUNCER_AUTH_FILE": str(run / "auth" / "userlist.txt"),
                 **{k: env[k] for k in ("SAGAZ_APP_PASSWORD", "SAGAZ_READER_PASSWORD",
                                        "SAGAZ_PGBOUNCER_ADMIN_PASSWORD",
                                        "SAGAZ_PGBOUNCER_STATS_PASSWORD")}}
    process = subprocess.Popen(
        ["/bin/sh", str(service_dir / "deploy" / "pgbouncer" / "pgbouncer-start.sh"),
         str(run / "pgbouncer.ini")], env=start_env, preexec_fn=user.preexec(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            result = subprocess.run(
                [psql, "-X", "-At", "-h", "127.0.0.1", "-p", str(port), "-U", "pgbouncer_admin",
                 "-d", "pgbouncer", "-c", "SHOW VERSION"], capture_output=True, text=True,
                env={**os.environ, "PGPASSWORD": env["SAGAZ_PGBOUNCER_ADMIN_PASSWORD"], **tls},
                timeout=10)
            if result.returncode == 0 or process.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert result.returncode == 0, (result.stderr, process.poll())
        assert "PgBouncer" in result.stdout
        auth = run / "auth" / "userlist.txt"
        assert stat.S_IMODE(auth.stat().st_mode) == 0o600
        assert f'"sagaz" "{env["SAGAZ_APP_PASSWORD"]}"' in auth.read_text()
        wrong = subprocess.run(
            [psql, "-X", "-h", "127.0.0.1", "-p", str(port), "-U", "pgbouncer_admin",
             "-d", "pgbouncer", "-c", "SHOW VERSION"], capture_output=True, text=True,
            env={**os.environ, "PGPASSWORD": "wrong", **tls}, timeout=10)
        assert wrong.returncode != 0 and "authentication failed" in wrong.stderr
        # The exporters' user may SHOW, not PAUSE or RELOAD.
        def as_stats(command: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [psql, "-X", "-At", "-h", "127.0.0.1", "-p", str(port), "-U", "pgbouncer_stats",
                 "-d", "pgbouncer", "-c", command], capture_output=True, text=True,
                env={**os.environ, "PGPASSWORD": env["SAGAZ_PGBOUNCER_STATS_PASSWORD"]},
                timeout=10)
        assert as_stats("SHOW POOLS").returncode == 0
        reload = as_stats("RELOAD")
        assert reload.returncode != 0 and "admin access needed" in reload.stderr
        plain = subprocess.run(
            [psql, "-X", "-h", "127.0.0.1", "-p", str(port), "-U", "pgbouncer_admin",
             "-d", "pgbouncer", "-c", "SHOW VERSION"], capture_output=True, text=True,
            env={**os.environ, "PGPASSWORD": env["SAGAZ_PGBOUNCER_ADMIN_PASSWORD"],
                 "PGSSLMODE": "disable"}, timeout=10)
        assert plain.returncode != 0 and "SSL required" in plain.stderr
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0].decode(errors="replace")
    assert "FATAL" not in output, output


# -- the generated scripts and SQL against a real PostgreSQL ---------------------------------------

@pytest.fixture
def cluster(local_cluster: Any) -> Any:
    """The session's local cluster: the server the generated scripts run against."""
    return local_cluster


def _run(script: Path, shell: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([shell, str(script)], env=env, capture_output=True, text=True,
                          timeout=60)


def test_generated_init_scripts_and_schema_run_on_postgresql(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cluster: Any,
) -> None:
    from sagaz.ha.local import SUPERUSER
    from sagaz.storage.postgresql.migrate import migrate

    deploy = generate(capsys, tmp_path / "deploy", "--with-ha")
    env = load_env(deploy / ".env")
    host, port = cluster.primary.host, str(cluster.primary.port)
    # Fresh names, so this test's roles and database are its own on the shared cluster.
    suffix = os.urandom(3).hex()
    names = {"SAGAZ_APP_USER": f"app_{suffix}", "SAGAZ_READER_USER": f"reader_{suffix}",
             "SAGAZ_REPLICATION_USER": f"repl_{suffix}", "SAGAZ_DATABASE": f"db_{suffix}",
             "SAGAZ_MONITOR_USER": f"monitor_{suffix}"}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "SAGAZ_"))}
    base["PATH"] = f"{cluster.state.bindir}:{base['PATH']}"
    # As in the containers: every client verifies the server (the local cluster's CA here).
    base.update(PGSSLMODE="verify-full", PGSSLROOTCERT=str(cluster.tls.ca_cert))
    admin = {**base, **names, "PGHOST": host, "PGPORT": port, "PGUSER": SUPERUSER,
             "PGPASSWORD": cluster.passwords[SUPERUSER],
             **{k: env[k] for k in ("SAGAZ_APP_PASSWORD", "SAGAZ_READER_PASSWORD",
                                    "SAGAZ_REPLICATION_PASSWORD", "SAGAZ_MONITOR_PASSWORD")}}
    for _ in range(2):  # idempotent
        result = _run(deploy / "init-primary.sh", "bash", admin)
        assert result.returncode == 0, result.stderr
    assert "pg_hba.conf" not in result.stdout  # not next to a data directory: SQL part only

    app = {**base, "PGHOST": host, "PGPORT": port, "PGUSER": names["SAGAZ_APP_USER"],
           "PGPASSWORD": env["SAGAZ_APP_PASSWORD"], "PGDATABASE": names["SAGAZ_DATABASE"]}
    first = _run(deploy / "init-schema.sh", "sh", app)
    assert first.returncode == 0, first.stderr
    assert "applying migration 0001_saga_tables" in first.stdout
    again = _run(deploy / "init-schema.sh", "sh", app)
    assert again.returncode == 0, again.stderr
    assert "applying migration" not in again.stdout

    def dsn(user: str, password: str) -> str:
        return (f"host={host} port={port} user={user} password={password} "
                f"dbname={names['SAGAZ_DATABASE']} sslmode=verify-full "
                f"sslrootcert={cluster.tls.ca_cert}")

    with psycopg.connect(dsn(names["SAGAZ_APP_USER"], env["SAGAZ_APP_PASSWORD"]),
                         autocommit=True) as conn:
        assert migrate(conn) == []  # sagaz finds the schema current: the same bookkeeping
        stats = conn.execute("SELECT table_name, partition_name "
                             "FROM get_partition_statistics()").fetchall()
        assert {t for t, _ in stats} == {"saga_executions", "saga_outbox", "saga_audit_log"}
        assert len(stats) > 3 + 3  # DEFAULT partitions and dated ones
        conn.execute("INSERT INTO saga_executions (saga_id, saga_name, status) "
                     "VALUES (gen_random_uuid(), 'x', 'PENDING')")
    reader = dsn(names["SAGAZ_READER_USER"], env["SAGAZ_READER_PASSWORD"])
    with psycopg.connect(reader, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM saga_executions").fetchone() == (1,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM saga_executions")
    # Least privilege, as init-primary.sh and init-schema.sh leave it (roles.sql, migrations as
    # the application): the reader reads sagaz's tables only, the application has no
    # cluster-wide power and does not own the database.
    superuser = dsn(SUPERUSER, cluster.passwords[SUPERUSER])
    assert_reader_is_least_privileged(reader, foreign_table=create_foreign_table(superuser))
    assert_app_role_is_confined(dsn(names["SAGAZ_APP_USER"], env["SAGAZ_APP_PASSWORD"]),
                                superuser, app_user=names["SAGAZ_APP_USER"],
                                database=names["SAGAZ_DATABASE"])
    with psycopg.connect(dsn(SUPERUSER, cluster.passwords[SUPERUSER]),
                         autocommit=True) as conn:
        row = conn.execute("SELECT rolreplication, rolsuper FROM pg_roles WHERE rolname = %s",
                           (names["SAGAZ_REPLICATION_USER"],)).fetchone()
        assert row == (True, False)
        # postgres_exporter's role: pg_monitor, and no way into the application's database.
        row = conn.execute("SELECT pg_has_role(%s, 'pg_monitor', 'MEMBER'), "
                           "has_database_privilege(%s, %s, 'CONNECT')",
                           (names["SAGAZ_MONITOR_USER"],) * 2 + (names["SAGAZ_DATABASE"],)
                           ).fetchone()
        assert row == (True, False)

    # The replica bootstrap: a real pg_basebackup with its own slot, twice (a re-clone drops the
    # slot its previous clone left behind).
    replica = tmp_path / "replica"
    replica.mkdir()
    clone = {**base, "PGDATA": str(replica / "pgdata"), "SAGAZ_ROLE": "replica",
             "SAGAZ_PRIMARY_HOST": host, "SAGAZ_PRIMARY_PORT": port,
             "SAGAZ_REPLICATION_USER": names["SAGAZ_REPLICATION_USER"],
             "SAGAZ_REPLICATION_SLOT": f"slot_{suffix}",
             "SAGAZ_REPLICATION_PASSWORD": env["SAGAZ_REPLICATION_PASSWORD"]}
    try:
        for _ in range(2):
            shutil.rmtree(replica / "pgdata", ignore_errors=True)
            result = _run(deploy / "replica-bootstrap.sh", "sh", clone)
            assert result.returncode == 0, result.stderr
            assert (replica / "pgdata" / "PG_VERSION").exists()
            assert (replica / "pgdata" / "standby.signal").exists()
            auto = (replica / "pgdata" / "postgresql.auto.conf").read_text()
            assert "passfile=" in auto and env["SAGAZ_REPLICATION_PASSWORD"] not in auto
            # pg_basebackup -R kept the TLS parameters: the replica streams over verified TLS.
            assert "sslmode=''verify-full''" in auto and str(cluster.tls.ca_cert) in auto, auto
            assert stat.S_IMODE((replica / "replication.pgpass").stat().st_mode) == 0o600
        with psycopg.connect(dsn(SUPERUSER, cluster.passwords[SUPERUSER]),
                             autocommit=True) as conn:
            slots = conn.execute("SELECT count(*) FROM pg_replication_slots "
                                 "WHERE slot_name = %s", (f"slot_{suffix}",)).fetchone()
            assert slots == (1,)
    finally:
        with psycopg.connect(dsn(SUPERUSER, cluster.passwords[SUPERUSER]),
                             autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                         "WHERE slot_name = %s", (f"slot_{suffix}",))


def test_kubernetes_carries_the_compose_files(capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    """One source: the ConfigMaps hold exactly the scripts, SQL and rw pool of docker-compose."""
    generate(capsys, tmp_path, "--with-ha")
    generate(capsys, tmp_path, "--k8s", "--with-ha")
    configs = {d["metadata"]["name"]: d["data"]
               for name in ("postgresql-ha.yaml", "pgbouncer.yaml")
               for d in documents(tmp_path / "k8s" / name) if d["kind"] == "ConfigMap"}
    for key in ("init-primary.sh", "replica-bootstrap.sh"):
        assert configs["postgresql-scripts"][key] == (tmp_path / key).read_text()
    schema = [tmp_path / "init-schema.sh", *sorted((tmp_path / "partitioning").rglob("*.sql"))]
    assert configs["sagaz-schema"] == {p.name: p.read_text() for p in schema}
    assert configs["pgbouncer-config"]["pgbouncer-start.sh"] == (
        tmp_path / "pgbouncer" / "pgbouncer-start.sh").read_text()
    compose_rw = (tmp_path / "pgbouncer" / "pgbouncer-rw.ini").read_text()
    assert configs["pgbouncer-config"]["pgbouncer-rw.ini"] == compose_rw.replace(
        "host=postgres-primary ", "host=postgresql-primary ").replace(
        "/tmp/sagaz-tls/server.", "/etc/sagaz/tls/tls.").replace(
        "/tmp/sagaz-tls/", "/etc/sagaz/tls/")  # the Secret's file names
