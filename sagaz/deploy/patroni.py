"""Patroni's configuration, one ``patroni.yml`` per node, rendered from the one template
(``templates/patroni/patroni.yml.j2``) that the local cluster (``sagaz dev up --ha --failover``)
and docker-compose (``sagaz init --with-ha --failover``) share.

No database driver and nothing of :mod:`sagaz.ha` here: ``sagaz init`` renders it, and the local
cluster passes its paths, addresses and secrets in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sagaz.deploy.render import render
from sagaz.errors import ConfigurationError

__all__ = ["PatroniNode", "PatroniSettings", "conf_value", "render_patroni_config"]


@dataclass(frozen=True)
class PatroniSettings:
    """What the cluster's leader election and replication promise, written to the DCS at
    bootstrap (``bootstrap.dcs``). The defaults are the test settings the project measures
    failover with; Patroni's own defaults are ttl 30, loop_wait 10, retry_timeout 10."""

    ttl: int = 20
    """Seconds the leader key lives: a replica takes over at most this long after the leader
    stopped renewing it."""
    loop_wait: int = 2
    """Seconds between two runs of each node's HA loop."""
    retry_timeout: int = 5
    """Seconds a DCS or PostgreSQL operation is retried before the node gives its role up."""
    maximum_lag_on_failover: int = 1024 * 1024
    """Bytes: a replica further behind than this is never promoted."""
    synchronous_mode: bool = False
    """Commits wait for a synchronous standby, and only it may be promoted (``--sync``)."""
    synchronous_mode_strict: bool = False
    """With synchronous_mode: writes stop when no standby is left, instead of going on
    asynchronously."""
    failsafe_mode: bool = True
    """A leader that reaches every member keeps serving while the DCS is down."""

    def __post_init__(self) -> None:
        # Patroni's own rules (its config validator): a leader must be able to retry the DCS
        # twice within one ttl, and never below these minimums.
        if self.ttl < 20 or self.loop_wait < 1 or self.retry_timeout < 3:
            raise ConfigurationError(
                f"Patroni needs ttl >= 20, loop_wait >= 1 and retry_timeout >= 3 (got ttl "
                f"{self.ttl}, loop_wait {self.loop_wait}, retry_timeout {self.retry_timeout})")
        if self.loop_wait + 2 * self.retry_timeout > self.ttl:
            raise ConfigurationError(
                f"Patroni needs loop_wait + 2 * retry_timeout <= ttl (got {self.loop_wait} + "
                f"2 * {self.retry_timeout} > {self.ttl}): raise ttl or lower the others")
        if self.synchronous_mode_strict and not self.synchronous_mode:
            raise ConfigurationError("synchronous_mode_strict needs synchronous_mode (--sync)")


@dataclass(frozen=True)
class PatroniNode:
    """One node's addresses, paths and secrets: everything of patroni.yml but the settings."""

    name: str
    scope: str
    restapi_listen: str
    restapi_connect: str
    pg_listen: str
    pg_connect: str
    data_dir: str
    pgpass: str
    etcd_hosts: list[str]
    tls_cert: str
    tls_key: str
    tls_ca: str
    restapi_user: str
    restapi_password: str
    superuser: str
    superuser_password: str
    replication_user: str
    replication_password: str
    networks: list[str]
    """The networks PostgreSQL accepts TCP (TLS) connections from (pg_hba)."""
    bin_dir: str = ""
    """The PostgreSQL binaries; empty: Patroni finds them on the PATH (the container image)."""
    node_parameters: dict[str, str | int] = field(default_factory=dict)
    """postgresql.conf settings of this node only: socket, certificates, logging."""


def conf_value(value: str) -> str | int:
    """A postgresql.conf value as sagaz writes it (``'scram-sha-256'``, ``10``) as Patroni
    takes it in YAML (the string without its quotes, or the number)."""
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    return int(value) if value.isdigit() else value


def render_patroni_config(node: PatroniNode, settings: PatroniSettings,
                          cluster_parameters: dict[str, str]) -> str:
    """patroni.yml of ``node``; ``cluster_parameters`` (postgresql.conf syntax, e.g. the local
    cluster's PRIMARY_SETTINGS) go to the DCS, the same on every node."""
    return render("patroni/patroni.yml.j2", **asdict(node), **asdict(settings),
                  cluster_parameters={k: conf_value(v) for k, v in cluster_parameters.items()})
