"""How ``sagaz dev status`` prints a cluster with automatic failover (Patroni + etcd): leader,
replicas, timeline, lag, synchronous standby, Patroni and etcd health, where the pools point.
The data comes from :func:`sagaz.ha.patroni_admin.patroni_status`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from .common import ExitCode
from .output import escape, out, print_warning, table_console

if TYPE_CHECKING:
    from sagaz.ha.local import LocalCluster

__all__ = ["print_patroni_status"]


def print_patroni_status(local: LocalCluster, as_json: bool) -> int:
    """Print the status (a table, or one JSON document); exit 1 when something is wrong."""
    from sagaz.ha.patroni_admin import patroni_status
    from sagaz.ha.patroni_cluster import PatroniCluster

    status = patroni_status(PatroniCluster(local))
    if as_json:
        typer.echo(json.dumps(status.to_dict(), indent=2, default=str))
        return ExitCode.OK if status.healthy else ExitCode.FAILED
    mode = ("synchronous" + (" (strict)" if status.synchronous_mode_strict else "")
            if status.synchronous_mode else "asynchronous")
    grid = Table(title=f"Patroni cluster in {escape(status.directory)}: {mode}, failsafe "
                       f"{'on' if status.failsafe_mode else 'off'}", title_justify="left")
    for column in ("node", "role", "state", "address", "timeline", "lag (bytes)", "Patroni",
                   "etcd"):
        grid.add_column(column, no_wrap=True)
    for m in status.members:
        healthy = m.patroni is True and m.etcd is True
        grid.add_row(m.name, m.role, m.state, m.host, str(m.timeline or "-"),
                     "-" if m.lag_bytes is None else f"{m.lag_bytes:,}",
                     "ok" if m.patroni is True else "down", "ok" if m.etcd is True else "down",
                     style=None if healthy else "bold red")
    table_console().print(grid)
    out.print(f"leader: {status.leader or 'none'} (timeline {status.timeline or '-'}); "
              f"sync standby: {', '.join(status.sync_standby) or '-'}", soft_wrap=True)
    out.print("pools: " + "; ".join(f"pgbouncer-{r} -> {','.join(n) or '-'}"
                                    for r, n in status.pools.items()), soft_wrap=True)
    out.print("supervisor: " + (f"pid {status.supervisor_pid}" if status.supervisor_pid
                                else "not running"))
    for error in status.errors:
        print_warning(error)
    out.print("[bold green]healthy[/]" if status.healthy else "[bold red]degraded[/]")
    return ExitCode.OK if status.healthy else ExitCode.FAILED
