"""`sagaz init --k8s [--with-ha] [--sync]`: the CloudNativePG deployment, every object validated by
its kind's schema (tests/acceptance/k8s_validation.py: the operator's v1.30 CRDs, a PodMonitor
schema from the documented fields, `kubernetes-validate --strict`), and its shape: instances,
synchronous replication, pools with the design's sizes, managed roles whose Secrets exist, the
bootstrap SQL from roles.sql and the migrations, TLS verified with the operator's CA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from init_helpers import _no_sagaz_env, documents, generate, init
from k8s_validation import POD_MONITOR_SCHEMA, crd_schemas, schema_errors, validate_manifests

from sagaz.deploy.bundle import APP_USER, DATABASE, READER_USER
from sagaz.deploy.cnpg_sql import roles_sql, schema_sql
from sagaz.storage.sql import migrations

__all__ = ["_no_sagaz_env"]  # the autouse fixture, for this module too

MANIFESTS = ["namespace.yaml", "secrets.yaml", "secrets-example.yaml", "postgresql-cluster.yaml",
             "poolers.yaml", "backups.yaml", "maintenance-cronjob.yaml", "sagaz-worker.yaml",
             "network-policies.yaml", "pod-monitors.yaml", "prometheus-rules.yaml",
             "grafana-dashboards.yaml"]
"""With --backup-snapshot-class; backups.yaml is not written without it."""
# Outside the kustomization: the example has no values, the PodMonitors and the PrometheusRule
# need the Prometheus Operator's CRDs.
NOT_KUSTOMIZED = {"secrets-example.yaml", "pod-monitors.yaml", "prometheus-rules.yaml"}

# What CloudNativePG's admission webhooks accept (its documented allowlist of PgBouncer
# parameters; the PostgreSQL parameters it fixes or blocks): the CRD schemas do not say.
PGBOUNCER_ALLOWED = {
    "application_name_add_host", "auth_type", "autodb_idle_timeout", "cancel_wait_timeout",
    "client_idle_timeout", "client_login_timeout", "client_tls_sslmode", "default_pool_size",
    "disable_pqexec", "dns_max_ttl", "dns_nxdomain_ttl", "idle_transaction_timeout",
    "ignore_startup_parameters", "listen_backlog", "log_connections", "log_disconnections",
    "log_pooler_errors", "log_stats", "max_client_conn", "max_db_connections", "max_packet_size",
    "max_prepared_statements", "max_user_connections", "min_pool_size", "pkt_buf",
    "query_timeout", "query_wait_timeout", "reserve_pool_size", "reserve_pool_timeout",
    "sbuf_loopcnt", "server_check_delay", "server_check_query", "server_connect_timeout",
    "server_fast_close", "server_idle_timeout", "server_lifetime", "server_login_retry",
    "server_reset_query", "server_reset_query_always", "server_round_robin",
    "server_tls_ciphers", "server_tls_protocols", "server_tls_sslmode", "stats_period",
    "suspend_timeout", "tcp_defer_accept", "tcp_socket_buffer", "tcp_keepalive", "tcp_keepcnt",
    "tcp_keepidle", "tcp_keepintvl", "tcp_user_timeout", "track_extra_parameters", "verbose"}
POSTGRES_FIXED = {
    "allow_system_table_mods", "archive_mode", "bonjour", "bonjour_name", "cluster_name",
    "config_file", "data_directory", "data_sync_retry", "event_source", "external_pid_file",
    "hba_file", "hot_standby", "ident_file", "jit_provider", "listen_addresses",
    "logging_collector", "port", "primary_conninfo", "primary_slot_name", "recovery_target",
    "recovery_target_action", "recovery_target_inclusive", "recovery_target_lsn",
    "recovery_target_name", "recovery_target_time", "recovery_target_timeline",
    "recovery_target_xid", "restore_command", "shared_preload_libraries", "temp_tablespaces",
    "unix_socket_directories", "unix_socket_group", "unix_socket_permissions",
    "archive_cleanup_command", "archive_command", "log_destination", "log_directory",
    "log_file_mode", "log_filename", "log_rotation_age", "log_rotation_size",
    "log_truncate_on_rotation", "promote_trigger_file", "recovery_end_command",
    "recovery_min_apply_delay", "restart_after_crash", "ssl", "ssl_ca_file", "ssl_cert_file",
    "ssl_crl_file", "ssl_dh_params_file", "ssl_ecdh_curve", "ssl_key_file",
    "ssl_passphrase_command", "ssl_passphrase_command_supports_reload",
    "ssl_prefer_server_ciphers", "stats_temp_directory", "synchronous_standby_names",
    "synchronized_standby_slots", "syslog_facility", "syslog_ident", "syslog_sequence_numbers",
    "syslog_split_messages", "wal_level"}


def _manifests(args: list[str]) -> list[str]:
    return [n for n in MANIFESTS if n != "backups.yaml" or "--backup-snapshot-class" in args]


def _resources(directory: Path, names: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for name in names
            if name != "secrets-example.yaml" for d in documents(directory / name)}


@pytest.mark.parametrize("args", [
    [], ["--with-ha"], ["--with-ha", "--sync", "--backup-snapshot-class", "csi-snapclass"],
    ["--with-ha", "--replicas", "4", "--namespace", "prod-saga", "--storage-size", "50Gi",
     "--image", "reg.example/app:1.2"],
])
def test_kubernetes_manifests_validate_against_their_schemas(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str],
) -> None:
    directory = generate(capsys, tmp_path / "out", "--k8s", *args) / "k8s"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    manifests = _manifests(args)
    found = validate_manifests([directory / name for name in manifests], scratch)
    backups = "--backup-snapshot-class" in args
    assert {d["kind"] for d in found["cnpg"]} == {"Cluster", "Pooler"} | (
        {"ScheduledBackup"} if backups else set())
    assert {d["kind"] for d in found["podmonitor"]} == {"PodMonitor"}
    assert {d["kind"] for d in found["prometheusrule"]} == {"PrometheusRule"}

    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["resources"] == [n for n in manifests if n not in NOT_KUSTOMIZED]
    assert sorted(p.name for p in directory.glob("*.yaml")) == sorted(
        [*manifests, "kustomization.yaml"])

    namespace = args[args.index("--namespace") + 1] if "--namespace" in args else "sagaz"
    replicas = (int(args[args.index("--replicas") + 1]) if "--replicas" in args
                else 2 if "--with-ha" in args else 0)
    resources = _resources(directory, manifests)
    assert kustomization["namespace"] == namespace
    for (kind, _), resource in resources.items():
        if kind != "Namespace":
            assert resource["metadata"]["namespace"] == namespace
    _check_cluster(resources, replicas, args)
    _check_pools(resources, replicas, namespace)
    _check_clients(resources, args)


def _check_cluster(resources: dict[tuple[str, str], dict[str, Any]], replicas: int,
                   args: list[str]) -> None:
    cluster = resources["Cluster", "postgresql"]["spec"]
    assert cluster["instances"] == replicas + 1
    assert "imageCatalogRef" not in cluster  # the CRD's rule: not both, and imageName is set
    size = args[args.index("--storage-size") + 1] if "--storage-size" in args else "10Gi"
    assert cluster["storage"]["size"] == size
    if "--sync" in args:
        assert cluster["postgresql"]["synchronous"] == {
            "method": "any", "number": 1, "dataDurability": "required"}
    else:
        assert "synchronous" not in cluster["postgresql"]  # asynchronous streaming
    parameters = cluster["postgresql"]["parameters"]
    assert not set(parameters) & POSTGRES_FIXED
    assert all(isinstance(v, str) for v in parameters.values())
    assert parameters["password_encryption"] == "scram-sha-256"
    assert cluster["postgresql"]["pg_hba"] == ["hostnossl all all all reject"]
    assert cluster["enableSuperuserAccess"] is False

    initdb = cluster["bootstrap"]["initdb"]
    assert (initdb["database"], initdb["owner"], initdb["secret"]["name"]) == (
        DATABASE, APP_USER, "sagaz-app")
    refs = initdb["postInitApplicationSQLRefs"]["configMapRefs"]
    assert [(r["name"], r["key"]) for r in refs] == [
        ("sagaz-bootstrap-sql", "roles.sql"), ("sagaz-bootstrap-sql", "schema.sql")]
    assert set(resources["ConfigMap", "sagaz-bootstrap-sql"]["data"]) == {"roles.sql",
                                                                          "schema.sql"}
    roles = {r["name"]: r for r in cluster["managed"]["roles"]}
    assert set(roles) == {APP_USER, READER_USER}
    assert roles[READER_USER]["inRoles"] == ["pg_monitor"]
    for role in roles.values():
        assert (role["login"], role["superuser"], role["replication"]) == (True, False, False)
        secret = resources["Secret", role["passwordSecret"]["name"]]
        assert secret["type"] == "kubernetes.io/basic-auth"
        assert secret["stringData"]["username"] == role["name"]
        assert len(secret["stringData"]["password"]) >= 32
        assert secret["metadata"]["labels"]["cnpg.io/reload"] == "true"

    if "--backup-snapshot-class" not in args:
        assert "backup" not in cluster  # the operator cannot snapshot without a class
        return
    backup = resources["ScheduledBackup", "postgresql-daily"]["spec"]
    assert (backup["method"], backup["cluster"]["name"], backup["online"]) == (
        "volumeSnapshot", "postgresql", False)
    assert len(backup["schedule"].split()) == 6  # the operator's cron has seconds first
    snapshot = cluster["backup"]["volumeSnapshot"]
    assert (snapshot["className"], snapshot["online"]) == ("csi-snapclass", False)


def _check_pools(resources: dict[tuple[str, str], dict[str, Any]], replicas: int,
                 namespace: str) -> None:
    rw = resources["Pooler", "pgbouncer-rw"]["spec"]
    ro = resources["Pooler", "pgbouncer-ro"]["spec"]
    # The design summary: rw transaction pooling 200 clients / 25 server connections; ro session
    # pooling 300 / 50; ports 6432 and 6433.
    for pool, kind, mode, clients, size, port in ((rw, "rw", "transaction", 200, 25, 6432),
                                                  (ro, "ro" if replicas else "r", "session",
                                                   300, 50, 6433)):
        assert (pool["cluster"]["name"], pool["type"], pool["pgbouncer"]["poolMode"]) == (
            "postgresql", kind, mode)
        parameters = pool["pgbouncer"]["parameters"]
        assert (parameters["max_client_conn"], parameters["default_pool_size"]) == (
            str(clients), str(size))
        assert parameters["client_tls_sslmode"] == "require"
        assert set(parameters) <= PGBOUNCER_ALLOWED
        (service_port,) = pool["serviceTemplate"]["spec"]["ports"]
        assert (service_port["name"], service_port["port"]) == ("pgbouncer", port)
    names = resources["Cluster", "postgresql"]["spec"]["certificates"]["serverAltDNSNames"]
    for pool in ("pgbouncer-rw", "pgbouncer-ro"):
        assert {pool, f"{pool}.{namespace}.svc", f"{pool}.{namespace}.svc.cluster.local"} <= set(
            names)
    assert {name for kind, name in resources if kind == "PodDisruptionBudget"} == {
        "pgbouncer-rw", "pgbouncer-ro"}
    assert {name for kind, name in resources if kind == "NetworkPolicy"} == {
        "postgresql-ingress", "pgbouncer-rw-ingress", "pgbouncer-ro-ingress"}
    for name in ("pgbouncer-rw", "pgbouncer-ro"):
        selector = resources["NetworkPolicy", f"{name}-ingress"]["spec"]["podSelector"]
        assert selector == {"matchLabels": {"cnpg.io/poolerName": name}}
    database = resources["NetworkPolicy", "postgresql-ingress"]["spec"]
    assert database["podSelector"]["matchLabels"]["cnpg.io/cluster"] == "postgresql"
    assert {p["port"] for rule in database["ingress"] for p in rule["ports"]} == {
        5432, 8000, 9187}


def _check_clients(resources: dict[tuple[str, str], dict[str, Any]], args: list[str]) -> None:
    cron = resources["CronJob", "partition-maintenance"]
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    # One table per transaction (a psql -c each): never every table's locks at once.
    command = pod["containers"][0]["command"]
    assert [command[i + 1] for i, word in enumerate(command) if word == "-c"] == [
        f"SELECT count(*) FROM maintain_all_partitions('{table}')"
        for table in ("saga_audit_log", "saga_executions", "saga_outbox")]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert (env["PGHOST"], env["PGSSLMODE"], env["PGSSLROOTCERT"]) == (
        "postgresql-rw", "verify-full", "/etc/sagaz/tls/ca.crt")
    image = args[args.index("--image") + 1] if "--image" in args else "sagaz:latest"
    worker = resources["Deployment", "sagaz-worker"]["spec"]["template"]["spec"]
    assert worker["containers"][0]["image"] == image
    assert worker["containers"][0]["command"] == ["sagaz", "worker", "--metrics-port", "9464",
                                                  "--metrics-host", "0.0.0.0"]
    for spec in (pod, worker):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
        # The operator's CA, its certificate only (never the CA's key).
        (tls,) = [v for v in spec["volumes"] if v["name"] == "tls"]
        assert tls["secret"]["secretName"] == "postgresql-ca"
        assert tls["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    urls = resources["Secret", "sagaz-postgres"]["stringData"]
    for key, host in (("storage-url", "pgbouncer-rw"), ("analytics-url", "pgbouncer-ro"),
                      ("database-url", "postgresql-rw")):
        assert f"@{host}." in urls[key]
        assert urls[key].endswith("?sslmode=verify-full&sslrootcert=/etc/sagaz/tls/ca.crt")
    monitor = resources["PodMonitor", "postgresql"]["spec"]["podMetricsEndpoints"][0]
    assert (monitor["scheme"], monitor["tlsConfig"]["ca"]["secret"]["name"]) == (
        "https", "postgresql-ca")


def test_the_schemas_refuse_what_the_api_server_would(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    """The validation can fail: an unknown field, a value out of an enum, a missing required
    field, in a Cluster, a Pooler and a PodMonitor."""
    directory = generate(capsys, tmp_path, "--k8s", "--with-ha") / "k8s"
    cluster = next(d for d in documents(directory / "postgresql-cluster.yaml")
                   if d["kind"] == "Cluster")
    cluster["spec"]["postgresql"]["synchronous"] = {"method": "any", "number": 1,
                                                    "dataDurability": "always"}
    cluster["spec"]["bootstrap"]["initdb"]["postInitApplicationSQLRef"] = {}
    errors = schema_errors(cluster, crd_schemas()["postgresql.cnpg.io/v1", "Cluster"])
    assert len(errors) == 2 and any("'always' is not one of" in e for e in errors), errors
    assert any("'postInitApplicationSQLRef' was unexpected" in e for e in errors), errors
    pooler = documents(directory / "poolers.yaml")[0]
    del pooler["spec"]["cluster"]
    assert schema_errors(pooler, crd_schemas()["postgresql.cnpg.io/v1", "Pooler"]) == [
        "spec: 'cluster' is a required property"]
    monitor = documents(directory / "pod-monitors.yaml")[0]
    monitor["spec"]["podMetricsEndpoints"][0]["tlsConfig"]["insecure"] = True
    assert len(schema_errors(monitor, POD_MONITOR_SCHEMA)) == 1


def test_bootstrap_sql_is_roles_sql_and_the_migrations(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    """One source: the ConfigMap holds roles.sql converted for the operator and every migration
    verbatim (tests/acceptance/test_init_cnpg_sql.py runs both on a real PostgreSQL)."""
    directory = generate(capsys, tmp_path, "--k8s", "--with-ha") / "k8s"
    config = next(d for d in documents(directory / "postgresql-cluster.yaml")
                  if d["kind"] == "ConfigMap")["data"]
    assert config["roles.sql"] == roles_sql(app_user=APP_USER, reader_user=READER_USER,
                                            database=DATABASE)
    assert config["schema.sql"] == schema_sql(app_user=APP_USER)
    for migration in migrations("postgresql"):
        assert migration.sql.rstrip() in config["schema.sql"]
    # No password in the SQL: the operator sets them from the Secrets.
    secrets = documents(directory / "secrets.yaml")[0]["stringData"]
    for password in (secrets["app-password"], secrets["reader-password"]):
        assert password not in config["roles.sql"]
    statements = [line for line in config["roles.sql"].splitlines()
                  if not line.lstrip().startswith("--")]
    assert not [line for line in statements if "PASSWORD" in line]


@pytest.mark.parametrize(("args", "needle"), [
    (["--k8s", "--sync"], "--sync applies to the Kubernetes deployment with replicas"),
    (["--with-ha", "--sync"], "--sync applies to the Kubernetes deployment with replicas"),
    (["--backup-snapshot-class", "x"], "--backup-snapshot-class only applies to Kubernetes"),
    (["--k8s", "--backup-snapshot-class", "Not_A_Name"], "is not a Kubernetes object name"),
])
def test_kubernetes_only_options_say_what_to_change(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], needle: str,
) -> None:
    code, out, err = init(capsys, "--dir", str(tmp_path / "out"), *args)
    assert code == 2, (out, err)
    assert needle in " ".join(err.split()) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_readme_says_to_install_the_operator_first(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    from sagaz.deploy.kubernetes import OPERATOR_MANIFEST

    code, out, err = init(capsys, "--dir", str(tmp_path), "--k8s", "--with-ha", "--sync")
    assert code == 0, err
    readme = (tmp_path / "k8s" / "README.md").read_text()
    install = readme.index(f"kubectl apply --server-side -f {OPERATOR_MANIFEST}")
    assert install < readme.index("kubectl apply -k")
    assert "dataDurability: required" in readme and "## Failover" in readme
    assert OPERATOR_MANIFEST in out  # the next steps printed start with it
