"""``sagaz ha``: failover drills on the local cluster (``sagaz dev up --ha``): promote a replica,
rejoin a node as a replica. The steps are in :mod:`sagaz.ha.failover`; this module prints them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .common import ExitCode, execute, fail
from .dev import DEFAULT_DIR, DirOption, cluster_errors, cluster_lock, load_cluster
from .output import escape, out, print_warning

if TYPE_CHECKING:
    from sagaz.ha.patroni_cluster import PatroniCluster

__all__ = ["ha_app"]

HA_HELP = """\
Manual failover of the local cluster started by `sagaz dev up --ha`.

`promote REPLICA` makes a replica the primary: pgbouncer-rw is paused (clients wait instead of
failing), the old primary stopped, the replica promoted, pgbouncer-rw re-pointed and resumed;
then the old primary is rebuilt as a replica of the new one (pg_rewind, else pg_basebackup).
Applications keep their SAGAZ_STORAGE_URL: it names pgbouncer-rw, not a server.

`rejoin NODE` makes a stopped or diverged node a streaming replica of the current primary.

`sagaz dev status` shows the roles before and after.

A cluster with automatic failover (`sagaz dev up --ha --failover`) is Patroni's to run: there
`switchover [--to NODE]` hands the leader role over (planned: the leader agrees, nothing is
lost), and `failover --to NODE` promotes a replica also when the leader is gone. Both go through
Patroni's REST API; `promote` and `rejoin` refuse (Patroni rejoins an old leader by itself,
with pg_rewind).
"""

ha_app = typer.Typer(name="ha", no_args_is_help=True, help=HA_HELP, rich_markup_mode="markdown")


class _Stages:
    """Prints each stage with the time since the command started."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, text: str) -> None:
        out.print(f"  [dim]{time.monotonic() - self.started:6.2f} s[/]  {escape(text)}",
                  soft_wrap=True)


@ha_app.command("promote")
def promote_command(
    replica: Annotated[str, typer.Argument(
        metavar="REPLICA", help="The replica to promote, e.g. node1 (see `sagaz dev status`).")],
    directory: DirOption = DEFAULT_DIR,
    drain_timeout: Annotated[float, typer.Option(
        "--drain-timeout", min=0, max=600, envvar="SAGAZ_HA_DRAIN_TIMEOUT", metavar="SECONDS",
        help="How long transactions running on the old primary may take to finish before it "
             "is stopped (and they are rolled back).")] = 5.0,
    rejoin_old: Annotated[bool, typer.Option(
        "--rejoin/--no-rejoin", envvar="SAGAZ_HA_REJOIN",
        help="Rebuild the old primary as a replica of the new one (else leave it stopped; "
             "`sagaz ha rejoin` later).")] = True,
) -> None:
    """Make REPLICA the primary (manual failover) and report how long the write pool was
    unavailable."""

    def body() -> int:
        load_cluster(directory)  # no cluster there: the usage error saying how to start one
        with cluster_lock(directory):  # cluster.json is read, changed and written back
            return locked()

    def locked() -> int:
        cluster = load_cluster(directory)
        if cluster.state.patroni is not None:
            fail(f"Patroni manages the roles of the cluster in {directory}: `sagaz ha "
                 f"switchover --to {replica}` moves the leader (planned), `sagaz ha failover "
                 f"--to {replica}` promotes it without the leader's consent")
        from sagaz.ha.failover import promote

        out.print(f"promoting {escape(replica)} (primary now: {cluster.state.primary})")
        stages = _Stages()
        with cluster_errors():
            report = promote(cluster, replica, progress=stages, drain_timeout=drain_timeout,
                             rejoin_old=rejoin_old)
        stages("done")
        for warning in report.warnings:
            print_warning(warning)
        out.print(f"[bold green]{report.new_primary} is the primary[/]; the write pool was "
                  f"unavailable for [bold]{report.write_downtime:.3f} s[/]", soft_wrap=True)
        if report.rejoin:
            out.print(f"{report.old_primary} is a replica again ({report.rejoin})")
        else:
            out.print(f"{report.old_primary} is stopped; bring it back with "
                      f"`sagaz ha rejoin {report.old_primary}`")
        return ExitCode.OK

    execute(body)


@ha_app.command("rejoin")
def rejoin_command(
    node: Annotated[str, typer.Argument(
        metavar="NODE", help="The node to make a replica of the current primary, e.g. node0.")],
    directory: DirOption = DEFAULT_DIR,
) -> None:
    """Make NODE a streaming replica of the current primary: a former primary after a
    promotion, a stopped or crashed replica. Does the least that works: nothing, re-point,
    restart, pg_rewind, or a fresh pg_basebackup."""

    def body() -> int:
        load_cluster(directory)  # no cluster there: the usage error saying how to start one
        with cluster_lock(directory):  # cluster.json is read, changed and written back
            return locked()

    def locked() -> int:
        cluster = load_cluster(directory)
        if cluster.state.patroni is not None:
            fail(f"Patroni rejoins the nodes of the cluster in {directory} by itself (pg_rewind, "
                 "else a new base backup): see `sagaz dev status`")
        from sagaz.ha.failover import rejoin
        from sagaz.ha.supervisor import refresh_read_pool

        stages = _Stages()
        with cluster_errors():
            how = rejoin(cluster, node, progress=stages)
            refresh_read_pool(cluster)
        stages("done")
        out.print(f"[bold green]{escape(node)} is a replica of {cluster.state.primary}[/] "
                  f"({how})")
        return ExitCode.OK

    execute(body)


def _patroni_cluster(directory: Path) -> PatroniCluster:
    load_cluster(directory)  # no cluster there: the usage error saying how to start one
    from sagaz.ha.patroni_cluster import PatroniCluster

    return PatroniCluster.load(directory)


ToOption = Annotated[str | None, typer.Option(
    "--to", envvar="SAGAZ_HA_TO", metavar="NODE",
    help="The replica to make the leader, e.g. node1 (see `sagaz dev status`).")]
TimeoutOption = Annotated[float, typer.Option(
    "--timeout", min=1, max=600, envvar="SAGAZ_HA_TIMEOUT", metavar="SECONDS",
    help="How long to wait for the new leader to serve.")]


@ha_app.command("switchover")
def switchover_command(to: ToOption = None, directory: DirOption = DEFAULT_DIR,
                       timeout: TimeoutOption = 60.0) -> None:
    """Planned change of leader in a Patroni cluster: the leader stops accepting writes, waits
    for the candidate (--to, else the healthiest replica) to catch up, and hands over; the
    pools follow. Reports how long it took."""

    def body() -> int:
        cluster = _patroni_cluster(directory)
        from sagaz.ha.patroni_admin import switchover

        started = time.monotonic()
        with cluster_errors():
            old, new = switchover(cluster, to, timeout)
        out.print(f"[bold green]{new} is the leader[/] (was {old}) after "
                  f"{time.monotonic() - started:.2f} s; {old} rejoins as a replica", soft_wrap=True)
        return ExitCode.OK

    execute(body)


@ha_app.command("failover")
def failover_command(to: Annotated[str, typer.Option(
        "--to", envvar="SAGAZ_HA_TO", metavar="NODE",
        help="The replica to promote, e.g. node1 (see `sagaz dev status`).")],
        directory: DirOption = DEFAULT_DIR, timeout: TimeoutOption = 60.0) -> None:
    """Promote the replica --to now, with or without a healthy leader (Patroni refuses a
    candidate that is not a healthy replica). Prefer `switchover` while the leader is healthy:
    an asynchronous replica may miss the last commits."""

    def body() -> int:
        cluster = _patroni_cluster(directory)
        from sagaz.ha.patroni_admin import failover

        started = time.monotonic()
        with cluster_errors():
            old, new = failover(cluster, to, timeout)
        out.print(f"[bold green]{new} is the leader[/] (was {old or 'none'}) after "
                  f"{time.monotonic() - started:.2f} s", soft_wrap=True)
        return ExitCode.OK

    execute(body)
