"""Rotating the passwords of the local cluster, in the order that keeps it serving: the database
first, then the files, then the pools.

1. On the primary, as the superuser, one transaction of ``ALTER ROLE ... PASSWORD`` with a SCRAM
   verifier computed by libpq on the client (``PQencryptPasswordConn``): the password itself is
   never sent, so it can appear in no server log, ``pg_stat_activity`` or
   ``pg_stat_statements``. The replicas replay it; rotation waits until each running one has,
   so that no pool logs in to a replica that still expects the old password.
2. ``secrets.json`` (0600), then the pass files the replicas stream with.
3. Each running PgBouncer: its auth file rewritten, then RELOAD (SIGHUP). Client and server
   connections already open stay open: only new logins need the new password.

Between 1 and 3 (milliseconds) a pool opening a new server connection for the rotated role
fails that login and retries (``server_login_retry``); the other roles are not touched.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from sagaz.errors import ConfigurationError, SagazError
from sagaz.ha.local import APP_USER, POOL_USERS, READER_USER, REPLICATION_USER, SUPERUSER
from sagaz.private_files import write_private_file

if TYPE_CHECKING:
    from sagaz.ha.local import LocalCluster

__all__ = ["PENDING_FILE", "ROLES", "Rotation", "rotate_passwords"]

logger = logging.getLogger(__name__)

PENDING_FILE = ".secrets-rotating.json"
"""The new passwords while a rotation runs (0600): left behind only if it was killed after the
database may have taken them."""

ROLES = (SUPERUSER, APP_USER, READER_USER, REPLICATION_USER)
"""The roles of the local cluster with a generated password, in the order they are rotated."""

REPLAY_TIMEOUT = 30.0
"""Seconds to wait for the replicas to replay the new passwords."""
RELOAD_TIMEOUT = 10.0
"""Seconds to wait for a PgBouncer to take its new auth file."""


@dataclass(frozen=True)
class Rotation:
    passwords: dict[str, str]
    """The new password of each rotated role."""
    lagging: list[str]
    """Replicas that had not replayed the change within REPLAY_TIMEOUT (or did not answer):
    logins to them with the new passwords fail until they catch up."""


def rotate_passwords(cluster: LocalCluster, roles: list[str] | None = None,
                     new_password: Callable[[], str] | None = None) -> Rotation:
    """Give ``roles`` (default: all of :data:`ROLES`) new passwords. ``new_password`` makes
    them (default: 24 random bytes, URL-safe)."""
    roles = list(dict.fromkeys(roles or ROLES))
    unknown = [role for role in roles if role not in ROLES]
    if unknown:
        raise ConfigurationError(
            f"no generated password for role {', '.join(map(repr, unknown))}: --role is one of "
            f"{', '.join(ROLES)}")
    make = new_password or (lambda: secrets.token_urlsafe(24))
    passwords = {role: str(make()) for role in roles}
    if not cluster.primary.running:
        raise SagazError(f"the primary {cluster.state.primary} is not running: start the "
                         "cluster (`sagaz dev up`) before rotating its passwords")
    # Kept until secrets.json has them: were this process killed right after the database
    # changed, the new passwords would otherwise be known to nobody.
    pending = cluster.directory / PENDING_FILE
    write_private_file(pending, json.dumps(passwords, indent=2))
    try:
        lsn = _set_in_database(cluster, passwords)
    except BaseException:
        pending.unlink(missing_ok=True)  # the transaction did not commit: nothing changed
        raise
    cluster.passwords.update(passwords)
    cluster.save_passwords()
    pending.unlink()
    lagging = _wait_for_replicas(cluster, lsn)
    if REPLICATION_USER in passwords:
        for replica in cluster.replicas:
            if replica.exists:
                replica.write_passfile(cluster.primary, REPLICATION_USER,
                                       passwords[REPLICATION_USER])
    for pool in ("rw", "ro"):
        bouncer = cluster.bouncer(pool)
        if bouncer.pid is not None:
            bouncer.reload()
            _wait_for_reload(cluster, bouncer.port, [r for r in passwords if r in POOL_USERS])
    return Rotation(passwords, lagging)


def _wait_for_reload(cluster: LocalCluster, port: int, roles: list[str]) -> None:
    """Until the pool on ``port`` accepts each of ``roles`` with its new password: PgBouncer
    handles the SIGHUP of a RELOAD on its own time, and the command must not return while the
    old passwords still open it."""
    deadline = time.monotonic() + RELOAD_TIMEOUT
    for role in roles:
        dsn = cluster.dsn(user=role, port=port, connect_timeout=5)
        while True:
            try:
                with psycopg.connect(dsn, autocommit=True, prepare_threshold=None):
                    break
            except psycopg.Error as exc:
                if time.monotonic() > deadline:
                    raise SagazError(
                        f"the new passwords are set (secrets.json has them), but the pool on "
                        f"port {port} does not accept {role} with its new one after "
                        f"{RELOAD_TIMEOUT:g} s ({' '.join(str(exc).split())}): restart it "
                        "with `sagaz dev restart pgbouncer-rw|pgbouncer-ro`") from exc
            time.sleep(0.02)


def _set_in_database(cluster: LocalCluster, passwords: dict[str, str]) -> str:
    """ALTER ROLE for each of ``passwords`` in one transaction; the primary's WAL position
    after it."""
    try:
        with psycopg.connect(cluster.node_dsn(cluster.state.primary), connect_timeout=5) as conn:
            for role, password in passwords.items():
                verifier = conn.pgconn.encrypt_password(
                    password.encode(), role.encode(), b"scram-sha-256").decode()
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(verifier)))
            conn.commit()
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            conn.commit()
    except psycopg.Error as exc:
        raise SagazError(f"setting the new passwords on {cluster.state.primary} failed, nothing "
                         f"was changed: {' '.join(str(exc).split())}") from exc
    assert row is not None
    return str(row[0])


def _wait_for_replicas(cluster: LocalCluster, lsn: str) -> list[str]:
    """Wait until every running replica has replayed ``lsn``; the ones that did not in time.
    Logs in as the superuser, whose password may be the one just changed: a replica that has
    not replayed it yet refuses the new one, which is retried like a lagging position."""
    deadline = time.monotonic() + REPLAY_TIMEOUT
    lagging = []
    for name in cluster.live_replicas():
        dsn = cluster.node_dsn(name, connect_timeout=5)
        while True:
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    row = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                                       (lsn,)).fetchone()
                if row and row[0]:
                    break
            except psycopg.Error as exc:
                if time.monotonic() > deadline:
                    logger.warning("replica %s did not answer: %s", name, exc,
                                   extra={"action": "rotation_replica_unreachable"})
            if time.monotonic() > deadline:
                lagging.append(name)
                break
            time.sleep(0.02)
    return lagging
