"""Backups of the generated deployments. docker-compose: the pgBackRest configuration shared by the
PostgreSQL services, WAL archiving through it, the scheduled backup service, S3 options whose
credentials only live in .env, and what a container would run (the generated pgbackrest.conf,
archive_command and backup script) run for real against a local PostgreSQL and pgBackRest."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from init_helpers import docker_compose_config, generate, init, load_env, require_tool, service_dir

__all__ = ["service_dir"]  # the fixture, imported for these tests

S3 = ["--backup-s3-bucket", "sagaz-backups", "--backup-s3-endpoint", "minio.internal:9000",
      "--backup-s3-region", "us-east-1"]
POSTGRES_SERVICES = ("postgres-primary", "postgres-replica", "pgbackrest-backup")


def _compose(directory: Path) -> dict[str, object]:
    data: dict[str, object] = yaml.safe_load((directory / "docker-compose.yaml").read_text())
    return data


def test_compose_backups_to_a_named_volume(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    directory = generate(capsys, tmp_path / "deploy", "--with-ha")
    result = docker_compose_config(directory)
    assert result.returncode == 0, result.stderr
    compose = _compose(directory)
    services = compose["services"]  # type: ignore[index]
    assert "pgbackrest-repo" in compose["volumes"]  # type: ignore[operator,index]
    conf = (directory / "pgbackrest" / "pgbackrest.conf").read_text()
    assert "repo1-type=posix" in conf and "repo1-path=/var/lib/pgbackrest" in conf
    for name in POSTGRES_SERVICES:
        mounts = services[name]["volumes"]
        assert "./pgbackrest/pgbackrest.conf:/etc/pgbackrest/pgbackrest.conf:ro" in mounts
        assert "pgbackrest-repo:/var/lib/pgbackrest" in mounts
    for name in ("postgres-primary", "postgres-replica"):
        args = services[name]["command"]
        assert "archive_mode=on" in args and "archive_timeout=60s" in args
        [command] = [a for a in args if a.startswith("archive_command=")]
        assert "pgbackrest --config=/etc/pgbackrest/pgbackrest.conf --stanza=sagaz" in command
        assert command.endswith("archive-push %p")
    backup = services["pgbackrest-backup"]
    assert backup["entrypoint"] == ["/bin/sh", "/sagaz/pgbackrest-backup.sh"]
    assert backup["depends_on"]["postgres-primary"]["condition"] == "service_healthy"
    assert "postgres-primary-data:/var/lib/postgresql/data" in backup["volumes"]
    assert "postgres-primary-run:/var/run/postgresql" in backup["volumes"]
    assert "postgres-primary-run:/var/run/postgresql" in services["postgres-primary"]["volumes"]
    dockerfile = (directory / "pgbackrest" / "Dockerfile").read_text()
    assert "FROM postgres:16-alpine" in dockerfile and "apk add --no-cache pgbackrest" in dockerfile
    readme = (directory / "README.md").read_text()
    assert "pgbackrest" in readme and "--type=time" in readme


def test_compose_backups_to_s3_take_credentials_from_env_only(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    directory = generate(capsys, tmp_path / "deploy", "--with-ha", *S3)
    conf = (directory / "pgbackrest" / "pgbackrest.conf").read_text()
    for line in ("repo1-type=s3", "repo1-s3-bucket=sagaz-backups",
                 "repo1-s3-endpoint=minio.internal:9000", "repo1-s3-region=us-east-1",
                 "repo1-s3-uri-style=path"):
        assert line in conf
    assert "key" not in conf.replace("repo1-s3-", "")  # no credential option in the file
    env = load_env(directory / ".env")
    assert env["SAGAZ_BACKUP_S3_KEY"] == "" and env["SAGAZ_BACKUP_S3_KEY_SECRET"] == ""
    # Empty placeholders: docker-compose refuses to start until they are set.
    refused = docker_compose_config(directory)
    assert refused.returncode != 0 and "SAGAZ_BACKUP_S3_KEY" in refused.stderr
    text = (directory / ".env").read_text()
    text = text.replace("SAGAZ_BACKUP_S3_KEY=\n", "SAGAZ_BACKUP_S3_KEY=AKIAEXAMPLEKEY\n")
    text = text.replace("SAGAZ_BACKUP_S3_KEY_SECRET=\n", "SAGAZ_BACKUP_S3_KEY_SECRET=s3cr3tvalue\n")
    (directory / ".env").write_text(text)
    result = docker_compose_config(directory)
    assert result.returncode == 0, result.stderr
    compose = _compose(directory)
    assert "pgbackrest-repo" not in compose["volumes"]  # type: ignore[operator,index]
    raw = (directory / "docker-compose.yaml").read_text()
    assert "AKIAEXAMPLEKEY" not in raw and "s3cr3tvalue" not in raw
    services = compose["services"]  # type: ignore[index]
    for name in POSTGRES_SERVICES:
        environment = services[name]["environment"]
        assert environment["PGBACKREST_REPO1_S3_KEY"].startswith("${SAGAZ_BACKUP_S3_KEY:?")


@pytest.mark.parametrize(("args", "needle"), [
    (["--backup-s3-bucket", "b-1"], "--backup-s3-endpoint, --backup-s3-region missing"),
    ([*S3[:2], "--backup-s3-endpoint", "https://s3.example.com", *S3[4:]], "not a host name"),
    (["--backup-s3-bucket", "Bad_Bucket", *S3[2:]], "is not an S3 bucket name"),
    ([*S3[:4], "--backup-s3-region", "EU West"], "is not a region name"),
    (["--k8s", *S3], "apply to the docker-compose deployment only"),
])
def test_invalid_backup_options_fail_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], needle: str,
) -> None:
    code, out, err = init(capsys, "--dir", str(tmp_path / "out"), "--with-ha", *args)
    assert code == 2, (out, err)
    assert needle in " ".join(err.split()), err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_generated_pgbackrest_config_archives_and_backs_up_a_real_server(
    capsys: pytest.CaptureFixture[str], service_dir: Path,
) -> None:
    """The generated pgbackrest.conf (rendered with local paths and a posix repository), the
    generated archive_command and the generated backup script, run against a real PostgreSQL."""
    from sagaz.deploy.backup import BackupPaths, archive_arguments, pgbackrest_conf
    from sagaz.ha.osuser import service_user
    from sagaz.ha.postgres import PostgresNode, conf_string
    from sagaz.tls import ensure_certificates

    pgbackrest = require_tool(shutil.which("pgbackrest"), "pgbackrest (apt-get install "
                                                          "pgbackrest)")
    user = service_user()
    node_dir = service_dir / "node"
    paths = BackupPaths(config=str(service_dir / "pgbackrest.conf"),
                        pg_path=str(node_dir / "data"), socket=str(node_dir),
                        repo=str(service_dir / "repo"), spool=str(service_dir / "spool"),
                        log=str(service_dir / "log"), lock=str(service_dir / "lock"))
    for sub in ("repo", "spool", "log", "lock"):
        (service_dir / sub).mkdir()
        user.own(service_dir / sub)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    conf = pgbackrest_conf(paths, port=port).replace("log-level-file=off", "log-level-file=info")
    Path(paths.config).write_text(conf)
    user.own(Path(paths.config))
    settings = {}
    for argument in archive_arguments(paths, timeout=5):
        name, value = argument.split("=", 1)
        settings[name] = value if name == "archive_mode" else conf_string(value)
    tls = ensure_certificates(service_dir / "tls", ["127.0.0.1", "localhost"])
    user.own(tls.directory)
    node = PostgresNode("backup-test", node_dir, port, settings=settings, tls=tls)
    node.init_primary("postgres", "pw-backup-test")
    node.start()
    try:
        env = {**user.env(), "PGPASSWORD": "pw-backup-test", "PGBACKREST_CONFIG": paths.config,
               "SAGAZ_BACKUP_ONCE": "1", "SAGAZ_BACKUP_START_TRIES": "3"}
        script = service_dir / "pgbackrest-backup.sh"
        deploy = generate(capsys, service_dir / "deploy", "--with-ha")
        shutil.copy(deploy / "pgbackrest" / "pgbackrest-backup.sh", script)
        script.chmod(0o755)

        def run(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(list(argv), env=env, cwd=service_dir, capture_output=True,
                                  text=True, timeout=300, preexec_fn=user.preexec())

        first = run("/bin/sh", str(script))
        assert first.returncode == 0, first.stdout + first.stderr
        assert "no full backup yet" in first.stdout
        again = run("/bin/sh", str(script))  # idempotent: the stanza exists, a full backup too
        assert again.returncode == 0 and "no full backup yet" not in again.stdout
        check = run(pgbackrest, "--stanza=sagaz", "check")  # a WAL switch reaches the repo
        assert check.returncode == 0, check.stdout + check.stderr
        diff = run(pgbackrest, "--stanza=sagaz", "backup", "--type=diff")
        assert diff.returncode == 0, diff.stdout + diff.stderr
        info = json.loads(run(pgbackrest, "--stanza=sagaz", "info", "--output=json").stdout)
        assert [b["type"] for b in info[0]["backup"]] == ["full", "diff"]
        assert info[0]["archive"][0]["max"]
        assert os.listdir(service_dir / "repo" / "archive" / "sagaz")
    finally:
        node.stop("immediate")


def test_kubernetes_backups_are_the_operators_volume_snapshots(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    """pgBackRest stays with docker-compose and the local cluster; on Kubernetes the operator
    backs up (a daily cold volume snapshot: no WAL archive needed)."""
    from init_helpers import documents

    plain = generate(capsys, tmp_path / "plain", "--k8s", "--with-ha") / "k8s"
    assert not (plain / "backups.yaml").exists()
    assert "--backup-snapshot-class CLASS" in " ".join((plain / "README.md").read_text().split())
    directory = generate(capsys, tmp_path / "snap", "--k8s", "--with-ha",
                         "--backup-snapshot-class", "csi-snapclass") / "k8s"
    (backup,) = documents(directory / "backups.yaml")
    assert (backup["kind"], backup["spec"]["method"], backup["spec"]["schedule"]) == (
        "ScheduledBackup", "volumeSnapshot", "0 0 1 * * *")
    cluster = next(d for d in documents(directory / "postgresql-cluster.yaml")
                   if d["kind"] == "Cluster")["spec"]
    assert cluster["backup"]["target"] == "prefer-standby"
    assert cluster["backup"]["volumeSnapshot"]["className"] == "csi-snapclass"
    assert not list(directory.rglob("pgbackrest*"))
    readme = " ".join((directory / "README.md").read_text().split())
    assert "Point-in-time recovery** needs a WAL archive" in readme


def test_archive_settings_import_without_a_database_driver() -> None:
    """`sagaz init` needs no driver: the archive settings module is driver-free."""
    code = ("import sys; sys.modules['psycopg'] = None; "
            "import sagaz.ha.archive_settings, sagaz.deploy.backup")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
