"""``sagaz dev restore``: the whole local cluster back to a point in time from its pgBackRest
repository (:mod:`sagaz.ha.backup.cluster_restore`): the primary restored in place, the replicas
cloned again, the pools serving the restored database."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from .common import ExitCode, execute, fail
from .dev import (
    DEFAULT_DIR,
    DirOption,
    cluster_errors,
    locked_cluster,
    require_driver,
    stage_printer,
)
from .output import escape, out

__all__ = ["restore_command"]


def restore_command(
    to: Annotated[str, typer.Option(
        "--to", metavar="TIME|LSN|latest",
        help="A time with its offset (2026-01-31T12:00:00+00:00), an LSN (0/5000050) or "
             "latest (all archived WAL).")],
    backup_set: Annotated[str | None, typer.Option(
        "--set", metavar="LABEL", help="Restore this backup (default: the one pgBackRest "
                                       "picks for the target).")] = None,
    directory: DirOption = DEFAULT_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document for "
                                                         "scripts.")] = False,
) -> None:
    """Restore the whole cluster from its backups to a point in time: stop it, restore the
    primary's data from the repository to the target (its current data is discarded once the
    restore succeeded; a failed restore puts it back), start and promote it there, clone every
    replica again from it, start the pools. Writes after the target are gone from the cluster
    (their WAL stays in the repository). Needs `sagaz dev up --backup`."""

    def body() -> int:
        require_driver()
        from sagaz.ha.backup.restore import RestoreTarget

        with locked_cluster(directory) as cluster:
            if cluster.state.patroni is not None:
                fail("dev restore does not support a cluster with automatic failover (it has "
                     "no pgBackRest repository): see `sagaz dev up --backup` without --failover")
            target = RestoreTarget.parse(to)
            from sagaz.ha.backup.cluster_restore import restore_cluster
            from sagaz.ha.backup.repo import BackupRepository

            BackupRepository(cluster).require_enabled()
            with cluster_errors():
                if as_json:
                    result = restore_cluster(cluster, target, backup_set=backup_set)
                else:
                    title = (f"restoring the cluster in {escape(str(cluster.directory))} to "
                             f"{escape(str(target))}")
                    with stage_printer(title) as stage:
                        result = restore_cluster(cluster, target, progress=stage,
                                                 backup_set=backup_set)
        if as_json:
            typer.echo(json.dumps(result.to_dict()))
            return ExitCode.OK
        replicas = ", ".join(result.replicas) or "no replicas"
        out.print(f"[bold green]restored[/] {result.backup} to {escape(result.target)} "
                  f"(at {result.restored_lsn}) in {result.seconds:.2f} s: primary "
                  f"{result.primary}, {replicas} re-cloned; the pools serve it again",
                  soft_wrap=True)
        out.print("  take a new full backup when convenient: `sagaz backup run --type full`",
                  soft_wrap=True)
        return ExitCode.OK

    execute(body)
