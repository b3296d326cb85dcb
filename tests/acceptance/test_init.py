"""`sagaz init` (docker-compose by default): the generated files validated offline (there is no
Docker engine here) with the real tools, `docker-compose config` and the compose-spec JSON
schema; writing (--force, invalid input, options from the environment) and secrets, also of
`--k8s`. The Kubernetes manifests: test_init_k8s.py; real PgBouncer and PostgreSQL:
test_init_services.py.

A test that needs a missing tool fails under CI=true and is skipped elsewhere.
"""

from __future__ import annotations

import glob
import json
import stat
from pathlib import Path

import pytest
import yaml
from init_helpers import (
    WEAK,
    _no_sagaz_env,
    docker_compose_config,
    documents,
    generate,
    init,
    load_env,
    require_tool,
    service_dir,
)

from sagaz.storage.sql import migrations

__all__ = ["_no_sagaz_env", "documents", "generate", "init", "load_env", "require_tool",
           "service_dir"]  # also for the other test_init_* modules

COMPOSE_SERVICES = {"postgres-primary", "postgres-init", "pgbackrest-backup", "pgbouncer-rw",
                    "pgbouncer-ro",
                    "sagaz-worker", "sagaz-metrics", "prometheus", "postgres-exporter",
                    "pgbouncer-exporter", "pgbouncer-exporter-ro", "grafana"}

# -- docker-compose --------------------------------------------------------------------------------

@pytest.mark.parametrize("replicas", [None, "1", "3"])
def test_compose_files_pass_docker_compose_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, replicas: str | None,
) -> None:
    args = ["--with-ha", "--replicas", replicas] if replicas else []
    directory = generate(capsys, tmp_path / "deploy", *args)
    result = docker_compose_config(directory)
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
    result = docker_compose_config(directory)
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
    monkeypatch.setenv("SAGAZ_INIT_SYNC", "1")
    code, _out, err = init(capsys)
    assert code == 0, err
    cluster = next(d for d in documents(tmp_path / "k8s" / "postgresql-cluster.yaml")
                   if d["kind"] == "Cluster")
    assert (cluster["metadata"]["namespace"], cluster["spec"]["instances"]) == ("from-env", 4)
    assert cluster["spec"]["postgresql"]["synchronous"]["dataDurability"] == "required"


def _postgres_args(directory: Path) -> dict[str, list[str]]:
    """The `-c name=value` settings of each PostgreSQL server, compose service or the Kubernetes
    Cluster's parameters (as name=value), of a generated deployment."""
    found: dict[str, list[str]] = {}
    compose = directory / "docker-compose.yaml"
    if compose.exists():
        for name, service in yaml.safe_load(compose.read_text())["services"].items():
            if name.startswith(("postgres-primary", "postgres-replica")):
                found[name] = service["command"]
    manifest = directory / "k8s" / "postgresql-cluster.yaml"
    if manifest.exists():
        cluster = next(d for d in documents(manifest) if d["kind"] == "Cluster")
        found["cluster"] = [f"{name}={value}" for name, value in
                            cluster["spec"]["postgresql"]["parameters"].items()]
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
                            "cluster"}
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
    k8s_documents = documents(tmp_path / "k8s" / "secrets.yaml")
    k8s_secret = k8s_documents[0]["stringData"]
    k8s_secrets = {v for k, v in k8s_secret.items() if k.endswith("-password")}
    # CloudNativePG needs no other password: no superuser's, its own replication and pool users.
    assert len(compose_secrets) == 8 and len(k8s_secrets) == 2
    # The roles' Secrets the operator reads hold the same passwords.
    assert {d["stringData"]["password"] for d in k8s_documents[1:]} == k8s_secrets
    assert all(len(s) >= 32 for s in compose_secrets | k8s_secrets)
    assert not compose_secrets & k8s_secrets  # every run generates new ones
    assert all(f":{k8s_secret['app-password']}@" in k8s_secret[key]
               for key in ("storage-url", "database-url"))
    assert f":{env['SAGAZ_APP_PASSWORD']}@localhost:6432/" in env["SAGAZ_STORAGE_URL"]

    private = {tmp_path / ".env", tmp_path / "k8s" / "secrets.yaml",
               *(tmp_path / d / "tls" / key for d in (".", "k8s")
                 for key in ("ca.key", "server.key"))}
    example_documents = documents(tmp_path / "k8s" / "secrets-example.yaml")
    example = example_documents[0]["stringData"]
    assert set(example) == set(k8s_secret) and set(example.values()) == {""}
    assert [d["stringData"]["password"] for d in example_documents[1:]] == ["", ""]
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
