"""``sagaz dev rotate-secrets``: new passwords for the local cluster, set in the database first,
then in secrets.json, then in the pools (:mod:`sagaz.ha.rotation`), without stopping anything."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import ExitCode, execute, fail
from .dev import DEFAULT_DIR, DirOption, cluster_errors, locked_cluster, require_driver
from .output import escape, out, print_warning

__all__ = ["rotate_secrets_command"]


def rotate_secrets_command(
    roles: Annotated[list[str] | None, typer.Option(
        "--role", envvar="SAGAZ_DEV_ROTATE_ROLES", metavar="ROLE", show_default=False,
        help="A role to rotate (repeat for several): postgres, sagaz, sagaz_reader or "
             "replicator. Default: all of them.")] = None,
    directory: DirOption = DEFAULT_DIR,
) -> None:
    """Give the cluster's roles new generated passwords while it runs: set in the database
    first (ALTER ROLE with a SCRAM verifier computed here, so the password never reaches the
    server's logs), then in DIR/secrets.json (0600), then in both pools (RELOAD). Connections
    already open stay open; new ones need the new password (`sagaz dev env` prints the new
    URLs). Roles not rotated are not affected."""

    def body() -> int:
        require_driver()
        with locked_cluster(directory) as cluster:
            if cluster.state.patroni is not None:
                fail("rotate-secrets does not support a cluster with automatic failover yet "
                     "(Patroni keeps the superuser and replication passwords in patroni.yml): "
                     "recreate it (`sagaz dev down --purge`, `sagaz dev up --ha --failover`)")
            from sagaz.ha.rotation import rotate_passwords

            with cluster_errors():
                rotation = rotate_passwords(cluster, roles)
        out.print(f"rotated the password{'s' if len(rotation.passwords) > 1 else ''} of "
                  f"{', '.join(rotation.passwords)}; new values in "
                  f"{escape(str(cluster.directory / 'secrets.json'))} (`sagaz dev env`)",
                  soft_wrap=True)
        for name in rotation.lagging:
            print_warning(f"replica {name} has not replayed the new passwords yet: logins to it "
                          "fail until it catches up (`sagaz dev status`)")
        return ExitCode.OK

    execute(body)
