"""Pools that follow a Patroni cluster: pgbouncer-rw on the current leader, pgbouncer-ro on the
replicas that stream from it.

One implementation for every deployment. The local cluster's supervisor
(:mod:`sagaz.ha.supervisor`) calls :func:`fetch_cluster` and :func:`follow_targets` once per pass;
``sagaz init --with-ha --failover`` copies this very file into the bundle as
``pgbouncer/patroni-follow.py``, where it runs as the pgbouncer container's main process
(``python3 patroni-follow.py ...``): it starts PgBouncer, and whenever the targets change
rewrites the host list of pgbouncer.ini and sends PgBouncer SIGHUP (RELOAD).

Which view counts: every member is asked, and the pools follow the leader that a majority of the
members name (:func:`agreed_view`); while no majority agrees they keep their targets.

Why polling ``GET /cluster`` and not only Patroni's ``on_role_change`` callback: a callback runs
on the node whose role changed, which may be the one that just crashed or lost its network; the
poll asks any member that answers and so also notices a leader that vanished without a word.
A pass costs one HTTPS request.

The standard library only: the container has no sagaz installed, and ``sagaz init`` needs no
driver.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

__all__ = ["FollowTargets", "agreed_view", "configured_hosts", "fetch_cluster", "fetch_views",
           "follow_targets", "main", "rewrite_database_hosts", "ssl_context"]

LEADER_ROLES = ("leader", "standby_leader")
REPLICA_ROLES = ("replica", "sync_standby", "quorum_standby")
SERVING_REPLICA_STATES = ("streaming", "running")


@dataclass(frozen=True)
class FollowTargets:
    leader: str | None
    """The member that holds the leader key and runs (None: an election is under way)."""
    leader_host: str | None
    replicas: list[str]
    """Members that replicate and may serve reads, by name."""
    replica_hosts: list[str]

    def read_hosts(self) -> list[str]:
        """Where the read pool points: the replicas, else the leader (reads keep working while
        the replicas are rebuilt), else nothing (keep what it has)."""
        if self.replica_hosts:
            return self.replica_hosts
        return [self.leader_host] if self.leader_host else []


def ssl_context(ca_file: str, cert_file: str | None = None,
                key_file: str | None = None) -> ssl.SSLContext:
    """TLS that verifies the member against the cluster CA (host name included)."""
    context = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


def fetch_cluster(endpoints: list[str], context: ssl.SSLContext,
                  timeout: float = 1.0) -> dict[str, Any] | None:
    """``GET /cluster`` of the first member that answers (``endpoints``: ``host:port`` of their
    REST APIs), or None when none does."""
    for endpoint in endpoints:
        try:
            with urllib.request.urlopen(f"https://{endpoint}/cluster", timeout=timeout,
                                        context=context) as response:
                document = json.load(response)
        except (OSError, ValueError):
            continue
        if isinstance(document, dict) and isinstance(document.get("members"), list):
            return document
    return None


def fetch_views(endpoints: list[str], context: ssl.SSLContext,
                timeout: float = 1.0) -> list[dict[str, Any]]:
    """``GET /cluster`` of every member at once: the documents of those that answered."""
    with ThreadPoolExecutor(max_workers=max(1, len(endpoints))) as pool:
        views = list(pool.map(lambda e: fetch_cluster([e], context, timeout), endpoints))
    return [v for v in views if v is not None]


def _leader_of(view: dict[str, Any]) -> str | None:
    return follow_targets(view).leader


def agreed_view(views: list[dict[str, Any]], members: int) -> dict[str, Any] | None:
    """The cluster as a majority of the ``members`` sees it: a view whose leader more than half
    of all members name, or None. A member cut off from the others (a partition) keeps
    naming itself the leader until its key expires; the pools must not follow it there."""
    counts = Counter(leader for leader in map(_leader_of, views) if leader is not None)
    for leader, count in counts.most_common(1):
        if count > members // 2:
            return next(v for v in views if _leader_of(v) == leader)
    return None


def follow_targets(cluster: dict[str, Any]) -> FollowTargets:
    """Where the pools should point, from a ``GET /cluster`` document."""
    leader = leader_host = None
    replicas: list[str] = []
    replica_hosts: list[str] = []
    for member in cluster.get("members", []):
        role, state = member.get("role"), member.get("state")
        tags = member.get("tags") or {}
        if role in LEADER_ROLES and state == "running":
            leader, leader_host = member.get("name"), member.get("host")
        elif (role in REPLICA_ROLES and state in SERVING_REPLICA_STATES
              and not tags.get("noloadbalance")):
            replicas.append(str(member.get("name")))
            replica_hosts.append(str(member.get("host")))
    return FollowTargets(leader, leader_host, replicas, replica_hosts)


def rewrite_database_hosts(ini: str, dbname: str, hosts: list[str]) -> str:
    """pgbouncer.ini with the ``host=`` of database ``dbname`` set to ``hosts``. When the list
    has several hosts, verify-full becomes verify-ca, as
    :func:`sagaz.ha.pgbouncer.server_tls_sslmode` explains (PgBouncer before 1.25 checks a host
    list as one name)."""
    pattern = re.compile(rf"^({re.escape(dbname)} = host=)\S+( )", re.MULTILINE)
    text = pattern.sub(lambda m: m[1] + ",".join(hosts) + m[2], ini)
    mode = "verify-ca" if len(hosts) > 1 else "verify-full"
    return re.sub(r"^server_tls_sslmode = verify-(full|ca)$", f"server_tls_sslmode = {mode}",
                  text, flags=re.MULTILINE)


def configured_hosts(ini: str, dbname: str) -> list[str]:
    match = re.search(rf"^{re.escape(dbname)} = host=(\S+) ", ini, re.MULTILINE)
    return match[1].split(",") if match else []


# -- the container's follower process ------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run PgBouncer (the command after ``--``, default ``pgbouncer CONFIG``) and keep database
    ``--dbname`` of its config ``--config`` on the leader (``--role rw``) or the replicas
    (``--role ro``) of the Patroni members ``--members host:port,...``, checked every
    ``--interval`` seconds. ``--source``: a read-only config copied to ``--config`` first."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--source")
    parser.add_argument("--role", choices=("rw", "ro"), required=True)
    parser.add_argument("--dbname", required=True)
    parser.add_argument("--members", required=True)
    parser.add_argument("--cafile", required=True)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    context = ssl_context(args.cafile)
    endpoints = args.members.split(",")
    if args.source:
        with open(args.source) as source:
            _write_private(args.config, source.read())
    command = [c for c in args.command if c != "--"] or ["pgbouncer", args.config]

    def follow_once() -> bool:
        """Rewrite the config when the targets changed; whether it did."""
        document = agreed_view(fetch_views(endpoints, context), len(endpoints))
        if document is None:
            return False
        targets = follow_targets(document)
        hosts = ([targets.leader_host] if targets.leader_host else []) \
            if args.role == "rw" else targets.read_hosts()
        with open(args.config) as config:
            ini = config.read()
        if not hosts or configured_hosts(ini, args.dbname) == hosts:
            return False
        _write_private(args.config, rewrite_database_hosts(ini, args.dbname, hosts))
        print(f"pgbouncer-{args.role} now on {','.join(hosts)}", flush=True)
        return True

    # Once before PgBouncer starts: it starts on the right servers, and is not sent SIGHUP
    # before it handles it (the default action of SIGHUP ends a process).
    follow_once()
    # The command must exec PgBouncer (pgbouncer-start.sh does): SIGHUP goes to this pid.
    child = subprocess.Popen(command)

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    time.sleep(args.interval)
    while child.poll() is None:
        if follow_once():
            child.send_signal(signal.SIGHUP)
        time.sleep(args.interval)
    return child.returncode or 0


def _write_private(path: str, text: str) -> None:
    """0600 (the file names the pool's users), through a rename: PgBouncer never reads half."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    temporary = path + ".new"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as config:
        config.write(text)
    os.replace(temporary, path)


if __name__ == "__main__":
    sys.exit(main())
