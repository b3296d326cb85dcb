"""``sagaz backup``: pgBackRest backups and point-in-time restores of the local cluster
(``sagaz dev up --ha --backup``). The work is in :mod:`sagaz.ha.backup`; this module prints."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.filesize import decimal
from rich.markup import escape
from rich.table import Table

from .common import ExitCode, execute, fail
from .dev import DEFAULT_DIR, DirOption, cluster_errors, load_cluster, stage_printer
from .output import out, table_console

if TYPE_CHECKING:
    from sagaz.ha.backup.repo import BackupRepository

__all__ = ["backup_app"]

BACKUP_HELP = """\
Backups and point-in-time recovery of the local cluster with pgBackRest (`sagaz dev up --ha
--backup` configures them and takes the first full backup).

```
sagaz backup run --type diff          # full | diff | incr
sagaz backup list                     # backups, LSN and time ranges, WAL archive, size
sagaz backup check                    # exit 1 unless WAL is archived and the archive is whole
sagaz backup restore --to 2026-01-31T12:00:00+00:00 --into /srv/restored --start
sagaz backup stop-restored /srv/restored
sagaz backup verify                   # the restore drill: restore latest, check, delete
```
"""

backup_app = typer.Typer(name="backup", no_args_is_help=True, help=BACKUP_HELP,
                         rich_markup_mode="markdown")

JsonOption = Annotated[bool, typer.Option("--json", help="One JSON document for scripts.")]


def _repo(directory: Path) -> BackupRepository:
    cluster = load_cluster(directory)
    from sagaz.ha.backup.repo import BackupRepository

    repo = BackupRepository(cluster)
    repo.require_enabled()
    return repo


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@backup_app.command("run")
def run_command(
    kind: Annotated[str, typer.Option(
        "--type", envvar="SAGAZ_BACKUP_TYPE", metavar="full|diff|incr",
        help="full: every file; diff: what changed since the last full; incr: since the last "
             "backup of any type.")] = "full",
    retention_full: Annotated[int | None, typer.Option(
        "--retention-full", min=1, max=9999, envvar="SAGAZ_BACKUP_RETENTION_FULL", metavar="N",
        show_default=False,
        help="Keep N full backups (with their diff/incr and the WAL they need), expire the "
             "rest (pgBackRest repo1-retention-full; kept for later runs).")] = None,
    directory: DirOption = DEFAULT_DIR,
) -> None:
    """Take a backup (from a replica when one runs) and expire what the retention drops."""

    def body() -> int:
        repo = _repo(directory)
        with cluster_errors():
            if retention_full is not None:
                repo.set_retention(retention_full)
            with stage_printer(f"backup of {escape(str(repo.cluster.directory))}") as stage:
                stage(f"pgbackrest backup --type={kind}")
                made = repo.backup(kind)
        out.print(f"[bold green]{made.label}[/] ({made.type}): {decimal(made.size)} of data, "
                  f"{decimal(made.repository_size)} stored; LSN {made.lsn_start} .. "
                  f"{made.lsn_stop}", soft_wrap=True)
        return ExitCode.OK

    execute(body)


@backup_app.command("list")
def list_command(directory: DirOption = DEFAULT_DIR, as_json: JsonOption = False) -> None:
    """The backups (type, start and stop time, LSN range, size), the WAL archive's range and
    the repository's size (from `pgbackrest info`)."""

    def body() -> int:
        repo = _repo(directory)
        with cluster_errors():
            info = repo.info()
        if as_json:
            typer.echo(json.dumps(info.to_dict(), indent=2))
            return ExitCode.OK
        grid = Table(title=f"backups of {escape(str(repo.cluster.directory))}",
                     title_justify="left")
        for column in ("label", "type", "started", "stopped", "LSN range", "size", "stored"):
            grid.add_column(column, no_wrap=True)
        for b in info.backups:
            grid.add_row(b.label, b.type, _when(b.started), _when(b.stopped),
                         f"{b.lsn_start} .. {b.lsn_stop}", decimal(b.size),
                         decimal(b.repository_size))
        table_console().print(grid)
        out.print(f"WAL archive: {info.wal_min or '-'} .. {info.wal_max or '-'}; repository "
                  f"{decimal(info.repository_bytes)} ({info.status})", soft_wrap=True)
        return ExitCode.OK

    execute(body)


@backup_app.command("check")
def check_command(
    directory: DirOption = DEFAULT_DIR,
    verify: Annotated[bool, typer.Option(
        "--verify/--no-verify", envvar="SAGAZ_BACKUP_CHECK_VERIFY",
        help="Also read back every archived file and check its checksum (pgbackrest "
             "verify).")] = True,
) -> None:
    """Exit 0 when WAL is flowing (the newest archived segment is younger than 2 x
    archive_timeout, or nothing is due) and the archive is whole; else exit 1 with the reason."""

    def body() -> int:
        repo = _repo(directory)
        from sagaz.ha.backup.archive import check_archive, primary_archiver

        with cluster_errors():
            report = check_archive(repo, verify=verify, primary=primary_archiver(repo))
        if not report.ok:
            fail(report.problems[0], ExitCode.FAILED)
        age = "" if report.newest_age is None else f", {report.newest_age:.0f} s ago"
        out.print(f"[bold green]ok[/]: newest archived WAL {report.newest or '-'}{age}")
        return ExitCode.OK

    execute(body)


@backup_app.command("restore")
def restore_command(
    to: Annotated[str, typer.Option(
        "--to", metavar="TIME|LSN|latest",
        help="A time with its offset (2026-01-31T12:00:00+00:00), an LSN (0/5000050) or "
             "latest (all archived WAL).")],
    into: Annotated[Path, typer.Option(
        "--into", metavar="DIR", file_okay=False,
        help="A new or empty directory for the restored server (never a node's).")],
    start: Annotated[bool, typer.Option(
        "--start", help="Start it on a free loopback port and wait until it accepts "
                        "writes.")] = False,
    backup_set: Annotated[str | None, typer.Option(
        "--set", metavar="LABEL", help="Restore this backup (default: the one pgBackRest "
                                       "picks for the target).")] = None,
    directory: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """Restore a backup plus archived WAL into a NEW data directory, to a point in time, an
    LSN or the end of the archive (recovery_target_action=promote)."""

    def body() -> int:
        repo = _repo(directory)
        from sagaz.ha.backup.restore import RestoreTarget, restore

        target = RestoreTarget.parse(to)
        with cluster_errors():
            if as_json:
                result = restore(repo.cluster, into, target, start=start,
                                 backup_set=backup_set)
            else:
                with stage_printer(f"restoring to {escape(str(target))}") as stage:
                    result = restore(repo.cluster, into, target, start=start, progress=stage,
                                     backup_set=backup_set)
        if as_json:
            typer.echo(json.dumps({"url": result.url, "target": result.target,
                                   "restored_lsn": result.restored_lsn,
                                   "seconds": round(result.seconds, 3),
                                   "backup": result.backup, "directory": result.directory}))
            return ExitCode.OK
        out.print(f"[bold green]restored[/] {result.backup} into {escape(result.directory)} "
                  f"in {result.seconds:.2f} s", soft_wrap=True)
        if result.url:
            out.print(f"  {escape(result.url)}  (at {result.restored_lsn}; the cluster's "
                      "passwords, see secrets.json)", soft_wrap=True)
            out.print(f"  stop it with `sagaz backup stop-restored {escape(str(into))}`",
                      soft_wrap=True)
        return ExitCode.OK

    execute(body)


@backup_app.command("stop-restored")
def stop_restored_command(
    into: Annotated[Path, typer.Argument(metavar="DIR", help="The --into of the restore.")],
) -> None:
    """Stop a server `sagaz backup restore --start` started (its data stays in DIR)."""

    def body() -> int:
        from sagaz.ha.backup.restore import stop_restored

        with cluster_errors():
            was = stop_restored(into)
        out.print(f"stopped the server in {escape(str(into))}" if was
                  else f"the server in {escape(str(into))} was not running", soft_wrap=True)
        return ExitCode.OK

    execute(body)


@backup_app.command("verify")
def verify_command(directory: DirOption = DEFAULT_DIR, as_json: JsonOption = False) -> None:
    """The restore drill: restore the latest backup plus WAL into a scratch directory, start
    it, count the saga tables' rows, dry-run partition maintenance, report the restore time and
    the data's age, delete it. Exit 3 when the restore or a check fails."""

    def body() -> int:
        repo = _repo(directory)
        from sagaz.ha.backup.drill import restore_drill

        with cluster_errors():
            if as_json:
                report = restore_drill(repo.cluster)
            else:
                with stage_printer("restore drill") as stage:
                    report = restore_drill(repo.cluster, progress=stage)
        if as_json:
            typer.echo(json.dumps(report.to_dict(), indent=2))
            return ExitCode.OK
        age = "-" if report.data_age_seconds is None else f"{report.data_age_seconds:.1f} s"
        out.print(f"[bold green]restored[/] {report.backup} in {report.restore_seconds:.2f} s; "
                  f"newest saga update {age} old", soft_wrap=True)
        out.print("rows: " + ", ".join(f"{t} {n:,}" for t, n in report.row_counts.items()),
                  soft_wrap=True)
        out.print("partitions: " + ", ".join(f"{t} {n}" for t, n in report.partitions.items())
                  + f"; maintenance would take {report.maintenance_actions} action(s)",
                  soft_wrap=True)
        return ExitCode.OK

    execute(body)
