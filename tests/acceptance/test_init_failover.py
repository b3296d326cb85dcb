"""`sagaz init --with-ha --failover`: docker-compose with etcd + Patroni, validated offline with
the real tools (there is no Docker engine here): `docker-compose config`, the compose-spec
schema, and `patroni --validate-config` on the rendered node configuration against a real etcd.

A test that needs a missing tool fails under CI=true and is skipped elsewhere.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from init_helpers import (
    _no_sagaz_env,
    docker_compose_config,
    free_port,
    generate,
    init,
    load_env,
    require_tool,
)

from sagaz.deploy import patroni_follow

NODES = ["patroni1", "patroni2", "patroni3"]
SERVICES = {"etcd1", "etcd2", "etcd3", *NODES, "postgres-roles", "postgres-init",
            "pgbouncer-rw", "pgbouncer-ro", "prometheus"}

__all__ = ["_no_sagaz_env"]  # the autouse fixture, for this module too


@pytest.fixture
def deployment(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Path:
    return generate(capsys, tmp_path / "deploy", "--with-ha", "--failover")


def test_compose_files_pass_docker_compose_config(deployment: Path) -> None:
    result = docker_compose_config(deployment)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load((deployment / "docker-compose.yaml").read_text())["services"]
    assert set(services) == SERVICES
    for name in [*NODES, "etcd1", "pgbouncer-rw"]:
        assert services[name]["build"] == "./patroni"
        assert services[name]["entrypoint"] == ["/bin/sh", "/sagaz/tls-setup.sh"]
        assert services[name]["environment"]["SAGAZ_RUN_AS"] == "postgres"
    for i, name in enumerate(NODES, start=1):
        node = services[name]
        assert node["command"] == ["patroni", "/etc/patroni/patroni.yml"]
        assert f"./patroni/{name}.yml:/etc/patroni/patroni.yml:ro" in node["volumes"]
        assert node["ports"] == [f"127.0.0.1:{5432 + i}:5432"]
        assert set(node["environment"]) >= {"PATRONI_SUPERUSER_PASSWORD",
                                            "PATRONI_REPLICATION_PASSWORD",
                                            "PATRONI_RESTAPI_PASSWORD"}
    for etcd in ("etcd1", "etcd2", "etcd3"):
        command = services[etcd]["command"]
        assert "--client-cert-auth" in command and "--peer-client-cert-auth" in command
    for role, port in (("rw", 6432), ("ro", 6433)):
        pool = services[f"pgbouncer-{role}"]
        assert pool["command"][:2] == ["python3", "/sagaz/patroni-follow.py"]
        assert f"--role={role}" in pool["command"]
        assert pool["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert services["postgres-roles"]["environment"]["PGTARGETSESSIONATTRS"] == "read-write"
    assert services["postgres-init"]["depends_on"] == {
        "postgres-roles": {"condition": "service_completed_successfully"}}
    dockerfile = (deployment / "patroni" / "Dockerfile").read_text()
    assert dockerfile.startswith("# Generated") and "FROM postgres:16\n" in dockerfile
    assert "patroni[etcd3]>=4,<5" in dockerfile
    prometheus = yaml.safe_load((deployment / "monitoring" / "prometheus.yml").read_text())
    patroni_job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "patroni")
    assert patroni_job["scheme"] == "https"
    assert patroni_job["static_configs"][0]["targets"] == [f"{n}:8008" for n in NODES]

    # Without .env there is no password: docker-compose refuses instead of using a default.
    (deployment / ".env").unlink()
    result = docker_compose_config(deployment)
    assert result.returncode != 0 and "is missing" in result.stderr


def test_compose_file_matches_the_compose_spec_schema(deployment: Path) -> None:
    import jsonschema

    found = sorted(glob.glob("/usr/lib/python3*/dist-packages/compose/config/compose_spec.json"))
    schema_path = require_tool(found[-1] if found else None,
                               "the compose-spec schema (apt-get install docker-compose)")
    validator = jsonschema.Draft201909Validator(json.loads(Path(schema_path).read_text()))
    compose = yaml.safe_load((deployment / "docker-compose.yaml").read_text())
    assert [e.message for e in validator.iter_errors(compose)] == []


def test_secrets_only_in_env_and_the_follower_is_the_local_code(deployment: Path) -> None:
    env = load_env(deployment / ".env")
    assert stat.S_IMODE((deployment / ".env").stat().st_mode) == 0o600
    passwords = [v for k, v in env.items() if k.endswith("PASSWORD")]
    assert len(passwords) >= 6 and all(len(p) >= 24 for p in passwords)
    for path in deployment.rglob("*"):
        if path.is_file() and path.name != ".env" and path.suffix != ".key":
            text = path.read_text(errors="replace")
            assert not any(p in text for p in passwords), path
    assert "target_session_attrs=read-write" in env["SAGAZ_DATABASE_URL"]
    assert "localhost:5433,localhost:5434,localhost:5435" in env["SAGAZ_DATABASE_URL"]
    follower = (deployment / "pgbouncer" / "patroni-follow.py").read_text()
    assert follower == Path(patroni_follow.__file__).read_text()
    assert "host=patroni1 " in (deployment / "pgbouncer" / "pgbouncer-rw.ini").read_text()


def test_failover_options_say_what_to_change(capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    for args, message in ((["--failover"], "--failover needs --with-ha"),
                          (["--with-ha", "--failover", "--k8s"], "docker-compose"),
                          (["--with-ha", "--failover", "--replicas", "2"], "3 nodes")):
        code, _, err = init(capsys, "--dir", str(tmp_path / "x"), *args)
        assert code == 2 and message in " ".join(err.split()), err


@pytest.fixture
def etcd() -> Iterator[str]:
    """A real etcd member on a free loopback port (the validator checks the DCS answers)."""
    binary = require_tool(shutil.which("etcd") or "/usr/bin/etcd", "etcd (apt-get install "
                                                                   "etcd-server)")
    data = Path(tempfile.mkdtemp(prefix="sagaz-etcd-"))
    client, peer = free_port(), free_port()
    process = subprocess.Popen(
        [binary, "--data-dir", str(data), "--listen-client-urls", f"http://127.0.0.1:{client}",
         "--advertise-client-urls", f"http://127.0.0.1:{client}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"default=http://127.0.0.1:{peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(["python3", "-c", f"import socket; socket.create_connection("
                              f"('127.0.0.1', {client}), 1)"], capture_output=True).returncode:
            assert process.poll() is None and time.monotonic() < deadline, "etcd did not start"
            time.sleep(0.1)
        yield f"127.0.0.1:{client}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        shutil.rmtree(data, ignore_errors=True)


def test_rendered_patroni_config_passes_patroni_validate_config(
        deployment: Path, etcd: str, tmp_path: Path) -> None:
    """The compose node's patroni.yml as Patroni itself checks it. What only exists inside the
    containers is put where it exists here: the etcd and PostgreSQL addresses (container names
    do not resolve on this host; port 5432 is taken) and the PostgreSQL 16 binaries (this host
    has 15). Every setting and section stays as generated."""
    patroni = shutil.which("patroni", path=os.path.dirname(sys.executable) + os.pathsep
                           + os.environ.get("PATH", ""))
    patroni = require_tool(patroni, "patroni (pip install 'sagaz[ha]')")
    bindir = require_tool(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
                          if glob.glob("/usr/lib/postgresql/*/bin") else None,
                          "the PostgreSQL server binaries")
    text = (deployment / "patroni" / "patroni1.yml").read_text()
    for name in ("etcd1", "etcd2", "etcd3"):
        text = text.replace(f'"{name}:2379"', json.dumps(etcd))
    text = (text.replace('"0.0.0.0:5432"', json.dumps(f"127.0.0.1:{free_port()}"))
                .replace('"0.0.0.0:8008"', json.dumps(f"127.0.0.1:{free_port()}"))
                .replace('"/usr/lib/postgresql/16/bin"', json.dumps(bindir)))
    config = tmp_path / "patroni1.yml"
    config.write_text(text)
    env = {**os.environ, "PATRONI_RESTAPI_PASSWORD": "p" * 24,
           "PATRONI_SUPERUSER_PASSWORD": "s" * 24, "PATRONI_REPLICATION_PASSWORD": "r" * 24}
    result = subprocess.run([patroni, "--validate-config", str(config)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    # And the check can fail: a setting Patroni refuses.
    config.write_text(text.replace("loop_wait: 2", "loop_wait: 0"))
    result = subprocess.run([patroni, "--validate-config", str(config)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "loop_wait" in result.stdout + result.stderr


def test_failover_init_needs_no_database_driver(tmp_path: Path) -> None:
    from test_init_without_driver import _WITHOUT_DRIVER

    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_DRIVER, "init", "--dir", str(tmp_path), "--with-ha",
         "--failover"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "patroni" / "patroni1.yml").exists()


def test_sync_sets_patronis_synchronous_mode(capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    directory = generate(capsys, tmp_path / "sync", "--with-ha", "--failover", "--sync")
    config = yaml.safe_load((directory / "patroni" / "patroni2.yml").read_text())
    dcs = config["bootstrap"]["dcs"]
    assert dcs["synchronous_mode"] is True and dcs["synchronous_mode_strict"] is False
    assert dcs["failsafe_mode"] is True and dcs["postgresql"]["use_pg_rewind"] is True
