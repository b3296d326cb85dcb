"""Driving a Patroni cluster of :mod:`sagaz.ha.patroni_cluster` through Patroni's REST API:
switchover (planned: the leader hands over), failover (to a named replica, also without a
healthy leader), and the status ``sagaz dev status`` shows (leader, replicas, timeline, lag,
synchronous standby, Patroni and etcd health).

Every request is HTTPS verified against the cluster CA; those that change something carry the
generated basic-auth credentials (never logged, never in an error message).
"""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

from sagaz.errors import ConfigurationError, SagazError
from sagaz.ha.patroni_cluster import API_USER, PatroniCluster

__all__ = ["MemberStatus", "PatroniStatus", "failover", "patroni_status", "switchover"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemberStatus:
    name: str
    role: str
    """leader, replica, sync_standby (Patroni's words), or ``unknown`` when absent."""
    state: str
    """running, streaming, starting, stopped... (Patroni's words)."""
    host: str
    timeline: int | None
    lag_bytes: int | None
    """Bytes the member's replay position is behind the leader (None on the leader)."""
    patroni: bool | str
    """True when its REST API answers, else why not."""
    etcd: bool | str
    """True when its etcd member is healthy, else why not."""


@dataclass
class PatroniStatus:
    directory: str
    leader: str | None
    replicas: list[str]
    sync_standby: list[str]
    timeline: int | None
    synchronous_mode: bool
    synchronous_mode_strict: bool
    failsafe_mode: bool
    members: list[MemberStatus] = field(default_factory=list)
    pools: dict[str, list[str]] = field(default_factory=dict)
    """The nodes each pool points at (pgbouncer.ini)."""
    supervisor_pid: int | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy}


def patroni_status(cluster: PatroniCluster) -> PatroniStatus:
    """What every member and etcd say now; unreachable parts are reported in ``errors``."""
    from sagaz.ha.supervisor import supervisor_pid

    settings = cluster.settings
    document = cluster.cluster_document(timeout=2.0) or {"members": []}
    by_name = {m.get("name"): m for m in document.get("members", [])}
    members: list[MemberStatus] = []
    errors: list[str] = []
    for node in cluster.state.nodes:
        member = by_name.get(node, {})
        api = _api_health(cluster, node)
        etcd = cluster.etcd_health(node)
        lag = member.get("lag")
        members.append(MemberStatus(
            node, str(member.get("role", "unknown")), str(member.get("state", "unknown")),
            cluster.state.host(node), member.get("timeline"),
            lag if isinstance(lag, int) else None, api, etcd))
        if api is not True:
            errors.append(f"Patroni {node} does not answer: {api}")
        if etcd is not True:
            errors.append(f"etcd {node} is not healthy: {etcd}")
        if member and member.get("state") not in ("running", "streaming"):
            errors.append(f"{node} is {member.get('state')}")
    leader = next((m.name for m in members if m.role in ("leader", "standby_leader")
                   and m.state == "running"), None)
    if leader is None:
        errors.append("no leader: writes are refused until Patroni elects one")
    replicas = [m.name for m in members if m.role in ("replica", "sync_standby",
                                                       "quorum_standby")]
    sync = [m.name for m in members if m.role == "sync_standby"]
    if settings.synchronous_mode and leader and not sync and len(members) > 1:
        errors.append("synchronous mode, but no synchronous standby")
    pools = {role: cluster.configured_pool_nodes(role) for role in ("rw", "ro")}
    if leader and pools["rw"] != [leader]:
        errors.append(f"pgbouncer-rw points at {','.join(pools['rw']) or 'nothing'}, not the "
                      f"leader {leader} (is the supervisor running?)")
    pid = supervisor_pid(cluster.local)
    if pid is None:
        errors.append("the supervisor is not running: the pools do not follow the leader")
    timeline = next((m.timeline for m in members if m.name == leader), None)
    return PatroniStatus(str(cluster.directory), leader, replicas, sync, timeline,
                         settings.synchronous_mode, settings.synchronous_mode_strict,
                         settings.failsafe_mode, members, pools, pid, errors)


def _api_health(cluster: PatroniCluster, node: str) -> bool | str:
    try:
        _request(cluster, node, "GET", "/patroni", timeout=2.0)
    except SagazError as exc:
        return str(exc)
    return True


def switchover(cluster: PatroniCluster, to: str | None = None,
               timeout: float = 60.0) -> tuple[str, str]:
    """A planned switchover from the current leader to ``to`` (default: Patroni picks the
    healthiest replica); waits until the new leader serves and the pools follow it. Returns
    (old leader, new leader)."""
    leader = cluster.leader()
    if leader is None:
        raise SagazError("the cluster has no leader now: a switchover needs one; "
                         "`sagaz ha failover --to NODE` promotes a replica without it")
    if to is not None:
        _check_candidate(cluster, to, leader)
    body: dict[str, str] = {"leader": leader}
    if to:
        body["candidate"] = to
    _request(cluster, leader, "POST", "/switchover", body)
    return leader, _wait_for_new_leader(cluster, leader, to, timeout)


def failover(cluster: PatroniCluster, to: str, timeout: float = 60.0) -> tuple[str | None, str]:
    """Promote ``to`` now, whether the leader is healthy or not (Patroni refuses a candidate
    that is not a healthy replica). Returns (old leader or None, new leader)."""
    leader = cluster.leader()
    _check_candidate(cluster, to, leader)
    _request(cluster, to, "POST", "/failover", {"candidate": to})
    return leader, _wait_for_new_leader(cluster, leader, to, timeout)


def _check_candidate(cluster: PatroniCluster, to: str, leader: str | None) -> None:
    if to not in cluster.state.nodes:
        raise ConfigurationError(
            f"no node {to!r} in the cluster in {cluster.directory}; its nodes are "
            f"{', '.join(cluster.state.nodes)} (leader {leader or 'none'})")
    if to == leader:
        raise ConfigurationError(f"{to} is the leader already; name a replica "
                                 "(see `sagaz dev status`)")


def _wait_for_new_leader(cluster: PatroniCluster, old: str | None, to: str | None,
                         timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader = cluster.leader()
        if leader is not None and leader != old and (to is None or leader == to):
            # Also the pools, now, instead of at the supervisor's next pass.
            cluster.follow()
            return leader
        time.sleep(0.1)
    raise SagazError(f"no new leader within {timeout:g} s (see the patroni.log files in "
                     f"{cluster.directory})")


def _request(cluster: PatroniCluster, node: str, method: str, path: str,
             body: dict[str, str] | None = None, timeout: float = 10.0) -> str:
    """One request to ``node``'s REST API, authenticated; its response text. An error says
    what Patroni answered."""
    password = cluster.local.passwords.get(API_USER)
    if password is None:
        raise ConfigurationError(f"{cluster.directory / 'secrets.json'} has no password for "
                                 "Patroni's REST API: recreate the cluster")
    token = base64.b64encode(f"{API_USER}:{password}".encode()).decode()
    request = urllib.request.Request(
        f"https://{cluster.api_endpoint(node)}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout,
                                    context=cluster.api_context()) as response:
            text: str = response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        answer = exc.read().decode(errors="replace").strip()
        raise SagazError(f"Patroni on {node} refused {method} {path} (HTTP {exc.code}): "
                         f"{answer}") from None
    except OSError as exc:
        raise SagazError(f"Patroni on {node} ({cluster.api_endpoint(node)}) did not answer "
                         f"{method} {path}: {' '.join(str(exc).split())}") from None
    logger.info("%s %s on %s", method, path, node,
                extra={"action": "patroni_request", "node": node, "path": path})
    return text
