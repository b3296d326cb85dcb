"""``sagaz dev``: a local PostgreSQL deployment without Docker (a primary, streaming replicas,
pgbouncer-rw and pgbouncer-ro on loopback) from the machine's binaries: up, status, env, down, and
the read-pool supervisor ``dev up`` runs in the background.

The work is done by :mod:`sagaz.ha` (imported when a command runs: it needs psycopg, an optional
extra); this module parses options and prints.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shlex
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sagaz.errors import ConfigurationError, SagazError
from sagaz.ha.archive_settings import ARCHIVE_TIMEOUT_ENV, DEFAULT_ARCHIVE_TIMEOUT
from sagaz.ha.dirlock import LOCK_FILE, directory_lock
from sagaz.ha.wal_settings import DEFAULT_MAX_SLOT_WAL_KEEP_SIZE

from .common import ExitCode, execute, fail, warn_loose_modes
from .dev_monitoring import (
    monitoring_parts_stopped,
    monitoring_running,
    monitoring_status,
    print_monitoring,
    set_monitoring,
    start_monitoring,
)
from .output import err_console, escape, out
from .stages import stage_printer

if TYPE_CHECKING:
    from sagaz.ha.local import LocalCluster

__all__ = ["DirOption", "cluster_lock", "dev_app", "load_cluster", "stage_printer"]

logger = logging.getLogger(__name__)

DEFAULT_DIR = Path(".sagaz/cluster")
DEFAULT_BASE_PORT = 25432

DEV_HELP = f"""\
Run the PostgreSQL deployment of sagaz on this machine, without Docker: a primary, streaming
replicas and two PgBouncer pools, on loopback, from the installed PostgreSQL 15 and PgBouncer
binaries (Debian/Ubuntu: `apt-get install postgresql-15 pgbouncer`).

```
sagaz dev up --ha              # primary + 1 replica + pgbouncer-rw/ro (+ the supervisor)
eval "$(sagaz dev env)"        # SAGAZ_STORAGE_URL, SAGAZ_ANALYTICS_URL, SAGAZ_DATABASE_URL
sagaz dev status               # roles, replication lag, pools, partitions
sagaz ha promote node1         # manual failover drill
sagaz dev up --ha --failover   # or: Patroni + etcd, automatic failover (`sagaz ha switchover`)
sagaz dev down --purge         # stop everything and delete the data
```

Ports (base port P, default {DEFAULT_BASE_PORT}): node i listens on 127.0.0.(i+1):P,
pgbouncer-rw on 127.0.0.1:P+1000, pgbouncer-ro on 127.0.0.1:P+1001. Passwords are generated and
kept in DIR/secrets.json (mode 0600); authentication is SCRAM everywhere. When run as root, the
servers run as the OS user `postgres` (SAGAZ_OS_USER), which must be able to reach DIR.

The embedded default of sagaz (SQLite file, in-process broker) needs none of this.
"""

dev_app = typer.Typer(name="dev", no_args_is_help=True, help=DEV_HELP,
                      rich_markup_mode="markdown")

DirOption = Annotated[Path, typer.Option(
    "--dir", envvar="SAGAZ_DEV_DIR", metavar="DIR", file_okay=False,
    help="Directory of the local cluster: data, logs, cluster.json, secrets.json (0600).")]


# -- shared with `sagaz ha` ------------------------------------------------------------------------


def require_driver() -> None:
    if importlib.util.find_spec("psycopg") is None:
        fail("the local cluster needs PostgreSQL support (psycopg is missing); install it with: "
             "pip install 'sagaz[postgres]'")


def load_cluster(directory: Path) -> LocalCluster:
    require_driver()
    from sagaz.ha.local import LocalCluster

    cluster = LocalCluster.load(directory)
    warn_loose_modes(cluster.private_files())
    return cluster


@contextmanager
def cluster_errors() -> Iterator[None]:
    """Usage errors stay usage errors (exit 2); a process that failed to start or a server that
    refused is exit 3, with the message (and log excerpt) sagaz.ha gives."""
    try:
        yield
    except ConfigurationError:
        raise
    except SagazError as exc:
        fail(str(exc), ExitCode.STORAGE)


# -- commands ---------------------------------------------------------------------------------


@dev_app.command("up")
def up_command(
    ha: Annotated[bool, typer.Option(
        "--ha", envvar="SAGAZ_DEV_HA",
        help="Primary + streaming replicas (--replicas). Without it: a single server with its "
             "two pools.")] = False,
    replicas: Annotated[int | None, typer.Option(
        "--replicas", min=0, max=200, envvar="SAGAZ_DEV_REPLICAS", metavar="N",
        show_default=False,
        help="Streaming replicas, with --ha. Default: 1 for a new cluster, the current count "
             "for an existing one (a larger N adds replicas).")] = None,
    directory: DirOption = DEFAULT_DIR,
    base_port: Annotated[int | None, typer.Option(
        "--base-port", min=1024, max=65535 - 1001, envvar="SAGAZ_DEV_BASE_PORT", metavar="P",
        show_default=False,
        help=f"Servers on P, pgbouncer-rw on P+1000, pgbouncer-ro on P+1001. Default "
             f"{DEFAULT_BASE_PORT} (an existing cluster keeps its ports).")] = None,
    supervise: Annotated[bool, typer.Option(
        "--supervise/--no-supervise", envvar="SAGAZ_DEV_SUPERVISE",
        help="Run the supervisor in the background (with replicas): it takes a replica that "
             "stops answering out of pgbouncer-ro and puts it back when it answers.")] = True,
    check_interval: Annotated[float, typer.Option(
        "--check-interval", min=0.1, max=3600, envvar="SAGAZ_DEV_CHECK_INTERVAL",
        metavar="SECONDS", help="How often the supervisor probes the replicas.")] = 1.0,
    max_slot_wal_keep_size: Annotated[str | None, typer.Option(
        "--max-slot-wal-keep-size", envvar="SAGAZ_MAX_SLOT_WAL_KEEP_SIZE", metavar="SIZE",
        show_default=False,
        help="How far (MB, GB, TB of WAL) a replica may fall behind before the primary gives "
             "its slot up, instead of keeping WAL until its disk is full; such a replica is "
             "then rebuilt from a fresh base backup by the supervisor. Default "
             f"{DEFAULT_MAX_SLOT_WAL_KEEP_SIZE} (an existing cluster keeps its value unless "
             "given).")] = None,
    backup: Annotated[bool, typer.Option(
        "--backup", envvar="SAGAZ_DEV_BACKUP",
        help="WAL archiving and backups with pgBackRest (repository under DIR/backup): "
             "archive_mode on every node, a first full backup (from a replica). See `sagaz "
             "backup`.")] = False,
    archive_timeout: Annotated[int | None, typer.Option(
        "--archive-timeout", min=1, max=3600, envvar=ARCHIVE_TIMEOUT_ENV, metavar="SECONDS",
        show_default=False,
        help="With --backup: archive a partly filled WAL segment after this many seconds, the "
             f"bound on what a total loss can cost. Default {DEFAULT_ARCHIVE_TIMEOUT}.")] = None,
    failover: Annotated[bool, typer.Option(
        "--failover", envvar="SAGAZ_DEV_FAILOVER",
        help="With --ha: automatic failover. --nodes etcd members and Patroni-managed servers; "
             "the supervisor keeps pgbouncer-rw on the leader. See `sagaz ha switchover`.")
    ] = False,
    nodes: Annotated[int, typer.Option(
        "--nodes", min=1, max=9, envvar="SAGAZ_DEV_NODES", metavar="N",
        help="With --failover: how many nodes (etcd member + Patroni + PostgreSQL each); 3 "
             "survive the loss of any one.")] = 3,
    sync: Annotated[bool, typer.Option(
        "--sync", envvar="SAGAZ_DEV_SYNC",
        help="With --failover: synchronous replication (Patroni's synchronous_mode): a commit "
             "returns once a standby has it, and no acknowledged commit is lost on failover.")
    ] = False,
    sync_strict: Annotated[bool, typer.Option(
        "--sync-strict", envvar="SAGAZ_DEV_SYNC_STRICT",
        help="With --sync: refuse writes while no synchronous standby is left "
             "(synchronous_mode_strict) instead of going on without one.")] = False,
    revive_after: Annotated[float, typer.Option(
        "--revive-after", min=1, max=3600, envvar="SAGAZ_DEV_REVIVE_AFTER", metavar="SECONDS",
        help="With --failover: the supervisor starts an etcd member or Patroni that died again "
             "after this long (a new cluster).")] = 30.0,
    monitoring: Annotated[bool | None, typer.Option(
        "--monitoring/--no-monitoring", envvar="SAGAZ_DEV_MONITORING", show_default=False,
        help="Prometheus (with the alert rules) on 127.0.0.1:P+2000, postgres_exporter per "
             "server and pgbouncer_exporter per pool, kept running by the supervisor (Debian: "
             "apt-get install prometheus prometheus-postgres-exporter "
             "prometheus-pgbouncer-exporter). Default: as the cluster had it.")] = None,
) -> None:
    """Create and start the local cluster (or whatever part of it is stopped), then print the
    SAGAZ_* URLs to use. Running it on a running cluster changes nothing (but the WAL cap when
    --max-slot-wal-keep-size is given)."""

    def body() -> int:
        require_driver()
        if replicas and not ha:
            fail("--replicas needs --ha (without it the cluster is a single server)")
        new_directory = not directory.exists()
        existing = set() if new_directory else set(directory.iterdir())
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            fail(f"cannot create the cluster directory {directory}: "
                 f"{exc.strerror or exc}; choose another --dir (SAGAZ_DEV_DIR)")
        with cluster_lock(directory):
            exists = (directory / "cluster.json").exists()
            if exists:
                return _up(exists)
            # A new cluster is created completely or not at all: whatever a failed attempt
            # made (servers started, data directories) is removed again, so the next `up`
            # starts from a clean directory instead of half a cluster.
            try:
                return _up(exists)
            except BaseException:
                _remove_new_cluster(directory, new_directory, existing)
                raise

    def _up(exists: bool) -> int:
        from sagaz.ha.local import LocalCluster
        from sagaz.ha.supervisor import start_supervisor, supervisor_pid

        if failover or (exists and LocalCluster.load(directory).state.patroni is not None):
            return _up_failover(exists)
        if exists:
            cluster = LocalCluster.load(directory)
            _check_compatible(cluster, replicas, base_port)
            if max_slot_wal_keep_size is not None:
                with cluster_errors():
                    if cluster.set_max_slot_wal_keep_size(max_slot_wal_keep_size):
                        out.print("max_slot_wal_keep_size is now "
                                  f"{cluster.state.max_slot_wal_keep_size}")
        else:
            count = replicas if replicas is not None else (1 if ha else 0)
            cluster = LocalCluster.new(
                directory, replicas=count, base_port=base_port or DEFAULT_BASE_PORT,
                **({} if max_slot_wal_keep_size is None
                   else {"max_slot_wal_keep_size": max_slot_wal_keep_size}))
        if monitoring is not None and monitoring != cluster.state.monitoring:
            with cluster_errors():
                set_monitoring(cluster, monitoring)
        # The supervisor keeps the read pool on live replicas and the monitoring processes up.
        wants_supervisor = supervise and (bool(cluster.state.replicas)
                                          or cluster.state.monitoring)
        # Users missing from secrets.json: made by an earlier sagaz; up adds them and runs
        # roles.sql again (it takes back what earlier versions granted).
        to_start = (cluster.stopped_parts() + cluster.missing_users() if exists
                    else ["everything"])
        wants_backup = backup and (not cluster.state.backup or (
            archive_timeout not in (None, cluster.state.archive_timeout)))
        if backup and not exists:
            cluster.state.backup = True  # the servers start with archiving on
            cluster.state.archive_timeout = archive_timeout or DEFAULT_ARCHIVE_TIMEOUT
        monitoring_stopped = monitoring_parts_stopped(cluster)
        if not to_start and not wants_backup and not monitoring_stopped and (
                not wants_supervisor or supervisor_pid(cluster) is not None):
            out.print(f"the cluster in {escape(str(cluster.directory))} is already up "
                      f"({_shape(cluster)}); nothing to do", soft_wrap=True)
            _print_urls(cluster, directory)
            print_monitoring(cluster)
            return ExitCode.OK
        cluster.preflight()
        started = time.monotonic()
        with cluster_errors():
            if to_start:
                title = ("creating" if not exists else "starting") + \
                    f" the local cluster in {escape(str(cluster.directory))} ({_shape(cluster)})"
                with stage_printer(title) as stage:
                    cluster.up(stage)
                    if backup:
                        _enable_backups(cluster, stage, archive_timeout)
            elif wants_backup:
                with stage_printer("enabling backups") as stage:
                    _enable_backups(cluster, stage, archive_timeout)
            if cluster.state.monitoring and (to_start or wants_backup or monitoring_stopped):
                with stage_printer("monitoring") as stage:
                    start_monitoring(cluster, stage)
            if wants_supervisor:
                pid = start_supervisor(cluster, check_interval)
                out.print(f"supervisor: pid {pid}, every {check_interval:g} s (log: "
                          f"{escape(str(cluster.directory / 'supervisor.log'))})", soft_wrap=True)
        out.print(f"[bold green]up[/] in {time.monotonic() - started:.2f} s: "
                  f"{_shape(cluster)}", soft_wrap=True)
        if not ha and not cluster.state.replicas:
            out.print("[dim]a single server without replicas (add --ha for replicas); the "
                      "embedded default of sagaz (SQLite) needs no server at all[/]",
                      soft_wrap=True)
        _print_urls(cluster, directory)
        print_monitoring(cluster)
        return ExitCode.OK

    def _up_failover(exists: bool) -> int:
        from sagaz.deploy.patroni import PatroniSettings
        from sagaz.ha.patroni_cluster import PatroniCluster
        from sagaz.ha.supervisor import start_supervisor

        if not ha:
            fail("--failover needs --ha (a Patroni cluster of --nodes nodes)")
        if backup or replicas is not None:
            fail("--failover takes --nodes, not --replicas, and no --backup (yet)")
        if exists:
            cluster = PatroniCluster.load(directory)
            _check_compatible(cluster.local, None, base_port)
        else:
            cluster = PatroniCluster.new(
                directory, nodes=nodes, base_port=base_port or DEFAULT_BASE_PORT,
                revive_after=revive_after,
                settings=PatroniSettings(synchronous_mode=sync,
                                         synchronous_mode_strict=sync_strict))
        started = time.monotonic()
        title = f"{'starting' if exists else 'creating'} the failover cluster in " \
            f"{escape(str(cluster.directory))} ({len(cluster.state.nodes)} nodes)"
        with cluster_errors():
            with stage_printer(title) as stage:
                cluster.up(stage)
            if supervise:
                pid = start_supervisor(cluster.local, min(check_interval, 0.5))
                out.print(f"supervisor: pid {pid} (log: "
                          f"{escape(str(cluster.directory / 'supervisor.log'))})", soft_wrap=True)
        out.print(f"[bold green]up[/] in {time.monotonic() - started:.2f} s: leader "
                  f"{cluster.state.primary}, pgbouncer-rw :{cluster.state.rw_port}, "
                  f"pgbouncer-ro :{cluster.state.ro_port}", soft_wrap=True)
        _print_urls(cluster.local, directory)
        return ExitCode.OK

    execute(body)


def _enable_backups(cluster: LocalCluster, stage: Callable[[str], None],
                    archive_timeout: int | None) -> None:
    from sagaz.ha.backup.repo import enable_backups

    enable_backups(cluster, stage, archive_timeout)


@contextmanager
def cluster_lock(directory: Path) -> Iterator[None]:
    """One `dev up|down|restart` or `ha promote|rejoin` at a time on ``directory``."""
    def waiting(pid: int | None) -> None:
        holder = f" (pid {pid})" if pid else ""
        err_console.print(f"waiting for another sagaz command on {escape(str(directory))}"
                          f"{holder} to finish ...", soft_wrap=True)

    try:
        with directory_lock(directory, waiting):
            yield
    except FileNotFoundError:
        fail(f"no local cluster in {directory} (it was deleted meanwhile): start one with "
             "`sagaz dev up --ha`")


@contextmanager
def locked_cluster(directory: Path) -> Iterator[LocalCluster]:
    """The existing cluster of ``directory``, loaded under its lock (:func:`cluster_lock`) for
    commands that stop and start its parts; the usage error saying how to start one when there
    is none."""
    if not (directory / "cluster.json").exists():
        load_cluster(directory)  # fails with that message
    with cluster_lock(directory):
        yield load_cluster(directory)


def _remove_new_cluster(directory: Path, new_directory: bool, existing: set[Path]) -> None:
    """Undo a failed creation: stop what it started, delete what it wrote (only that)."""
    try:
        cluster = load_cluster(directory)
    except ConfigurationError:
        cluster = None  # it failed before writing cluster.json: nothing runs
    if cluster is not None:
        try:
            cluster.down()
        except Exception:
            # Best effort: the error that made `up` fail is the one to report.
            logger.warning("stopping the half-created cluster in %s failed", directory,
                           exc_info=True, extra={"action": "dev_up_rollback_failed"})
    if new_directory:
        shutil.rmtree(directory, ignore_errors=True)
        return
    for entry in set(directory.iterdir()) - existing:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _check_compatible(cluster: LocalCluster, replicas: int | None, base_port: int | None) -> None:
    s = cluster.state
    if base_port is not None and base_port != s.base_port:
        fail(f"the cluster in {cluster.directory} uses base port {s.base_port}, not {base_port}: "
             "drop --base-port, or recreate it (`sagaz dev down --purge`, then `sagaz dev up`)")
    if replicas is None or replicas == len(s.replicas):
        return
    if replicas < len(s.replicas):
        fail(f"the cluster in {cluster.directory} has {len(s.replicas)} replica(s); removing "
             "replicas is not supported: recreate it (`sagaz dev down --purge`) with "
             f"--replicas {replicas}")
    highest = max(int(n.removeprefix("node")) for n in s.nodes)
    s.nodes += [f"node{highest + 1 + i}" for i in range(replicas - len(s.replicas))]
    cluster.save()


def _shape(cluster: LocalCluster) -> str:
    s = cluster.state
    return (f"primary {s.primary} on {s.host(s.primary)}:{s.base_port}, "
            f"{len(s.replicas)} replica(s), pgbouncer-rw :{s.rw_port}, pgbouncer-ro :{s.ro_port}")


def _print_urls(cluster: LocalCluster, directory: Path) -> None:
    env = cluster.env()
    if cluster.state.patroni is not None:
        from sagaz.ha.patroni_cluster import PatroniCluster

        env = PatroniCluster(cluster).env()
    what = {"SAGAZ_STORAGE_URL": "write pool (pgbouncer-rw, transaction pooling, the primary)",
            "SAGAZ_ANALYTICS_URL": "read pool (pgbouncer-ro, the replicas; read-only user)",
            "SAGAZ_DATABASE_URL": "direct to the primary (migrations, `sagaz db`)"}
    if cluster.state.patroni is not None:
        what["SAGAZ_DATABASE_URL"] = "every node; libpq picks the leader (migrations, `sagaz db`)"
    out.print("\nUse these. They contain generated passwords, kept in "
              f"{escape(str(cluster.directory / 'secrets.json'))} (mode 0600):", soft_wrap=True)
    for key, value in env.items():
        out.print(f"  {key}={escape(value)}", soft_wrap=True)
        out.print(f"    [dim]{what.get(key, '')}[/]")
    flag = "" if directory == DEFAULT_DIR else f" --dir {shlex.quote(str(directory))}"
    out.print(f'or: eval "$(sagaz dev env{escape(flag)})"', soft_wrap=True)


@dev_app.command("env")
def env_command(directory: DirOption = DEFAULT_DIR) -> None:
    """Print `export SAGAZ_...=...` lines for the local cluster: `eval "$(sagaz dev env)"`.
    The values contain the generated passwords."""

    def body() -> int:
        cluster = load_cluster(directory)
        if cluster.state.patroni is not None:
            from sagaz.ha.patroni_cluster import PatroniCluster

            failover = PatroniCluster(cluster)
            for key, value in failover.env().items():
                typer.echo(f"export {key}={shlex.quote(value)}")
            typer.echo("# or, without the pool (libpq finds the leader; no transaction pooling):")
            typer.echo(f"# export SAGAZ_STORAGE_URL={shlex.quote(failover.multihost_url())}")
            return ExitCode.OK
        for key, value in cluster.env().items():
            typer.echo(f"export {key}={shlex.quote(value)}")
        return ExitCode.OK

    execute(body)


@dev_app.command("status")
def status_command(
    directory: DirOption = DEFAULT_DIR,
    as_json: Annotated[bool, typer.Option(
        "--json", envvar="SAGAZ_DEV_STATUS_JSON",
        help="One JSON document for scripts: nodes, replication, slots, pools, partitions, "
             "supervisor, healthy.")] = False,
) -> None:
    """Show each node's role (what the server says, pg_is_in_recovery) and replication lag in
    bytes and seconds, the PgBouncer pools (SHOW POOLS / STATS / DATABASES), the replication
    slots and the partition count per table. Exit 1 when something is down or out of place."""

    def body() -> int:
        cluster = load_cluster(directory)
        from sagaz.ha.health import collect

        from .dev_status import print_health

        if cluster.state.patroni is not None:
            from .dev_failover import print_patroni_status

            return print_patroni_status(cluster, as_json)
        health = collect(cluster)
        if as_json:
            typer.echo(json.dumps({**health.to_dict(), "monitoring": monitoring_status(cluster)},
                                  indent=2, default=str))
        else:
            print_health(health)
            print_monitoring(cluster)
        healthy = health.healthy and not monitoring_parts_stopped(cluster)
        return ExitCode.OK if healthy else ExitCode.FAILED

    execute(body)


@dev_app.command("down")
def down_command(
    directory: DirOption = DEFAULT_DIR,
    purge: Annotated[bool, typer.Option(
        "--purge", envvar="SAGAZ_DEV_PURGE",
        help="Also delete the directory: all data, logs and the generated passwords.")] = False,
) -> None:
    """Stop the supervisor, both pools and every server (fast shutdown: running transactions
    are rolled back). Data stays unless --purge."""

    def body() -> int:
        if not (directory / "cluster.json").exists():
            return _nothing_to_stop()
        with cluster_lock(directory):
            if not (directory / "cluster.json").exists():  # another `down --purge` was first
                return _nothing_to_stop()
            return _down()

    def _nothing_to_stop() -> int:
        if purge and directory.exists() and any(
                entry.name != LOCK_FILE for entry in directory.iterdir()):
            fail(f"{directory} holds no sagaz cluster (no cluster.json); not deleting it")
        out.print(f"no cluster in {escape(str(directory))}; nothing to stop", soft_wrap=True)
        return ExitCode.OK

    def _down() -> int:
        cluster = load_cluster(directory)
        from sagaz.ha.supervisor import supervisor_pid

        running = cluster.running_parts() + monitoring_running(cluster)
        if supervisor_pid(cluster) is not None:
            running.append("supervisor")
        with cluster_errors():
            cluster.down(purge=purge)
        out.print(("stopped " + ", ".join(running)) if running else "nothing was running")
        if purge:
            out.print(f"deleted {escape(str(cluster.directory))} (data and passwords)",
                      soft_wrap=True)
        return ExitCode.OK

    execute(body)


@dev_app.command("restart")
def restart_command(
    name: Annotated[str, typer.Argument(
        metavar="NAME", help="node0 .. nodeN, pgbouncer-rw or pgbouncer-ro.")],
    directory: DirOption = DEFAULT_DIR,
) -> None:
    """Restart one server or pool of the local cluster (fast shutdown: its running transactions
    are rolled back), e.g. after changing its settings or to rehearse a restart under load. A
    stopped one is started. The other parts keep running."""

    def body() -> int:
        require_driver()
        with locked_cluster(directory) as cluster:
            started = time.monotonic()
            with cluster_errors():
                cluster.restart(name)
        out.print(f"restarted {escape(name)} in {time.monotonic() - started:.2f} s",
                  soft_wrap=True)
        return ExitCode.OK

    execute(body)


@dev_app.command("supervise")
def supervise_command(
    directory: DirOption = DEFAULT_DIR,
    interval: Annotated[float, typer.Option(
        "--interval", min=0.1, max=3600, envvar="SAGAZ_DEV_CHECK_INTERVAL", metavar="SECONDS",
        help="Seconds between two probes of the replicas.")] = 1.0,
) -> None:
    """Keep pgbouncer-ro on the replicas that answer (`dev up` runs this in the background; run
    it in the foreground to watch it, with --log-level INFO). Stops on SIGTERM/SIGINT or when
    the cluster directory is deleted."""

    def body() -> int:
        require_driver()
        from sagaz.ha.supervisor import run_supervisor

        with cluster_errors():
            run_supervisor(directory, interval)
        return ExitCode.OK

    execute(body)
