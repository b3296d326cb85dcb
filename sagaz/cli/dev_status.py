"""How ``sagaz dev status`` prints the health of a local cluster without automatic failover
(:mod:`sagaz.ha.health`): nodes, pools, slots, partitions, supervisor."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.filesize import decimal
from rich.table import Table

from .output import escape, out, print_warning, table_console

if TYPE_CHECKING:
    from sagaz.ha.health import ClusterHealth

__all__ = ["print_health"]


def print_health(h: ClusterHealth) -> None:
    lag = {r.name: r for r in h.replication}
    grid = Table(title=f"nodes of {escape(h.directory)}", title_justify="left")
    for column in ("node", "role", "address", "pid", "lsn", "state", "lag (bytes)",
                   "lag (s)"):
        grid.add_column(column, no_wrap=True,
                        justify="right" if column.startswith(("lag", "pid")) else "left")
    for n in h.nodes:
        role = n.role if n.role == n.configured_role else f"{n.role} (expected {n.configured_role})"
        style = None if n.role == n.configured_role else "bold red"
        stat = lag.get(n.name)
        state = stat.state if stat else (n.receiver_status or "-") if n.role == "replica" else "-"
        lag_bytes = f"{stat.replay_lag_bytes:,}" if stat and stat.replay_lag_bytes is not None \
            else "-"
        seconds = stat.replay_lag_seconds if stat and stat.replay_lag_seconds is not None \
            else n.replay_delay_seconds
        grid.add_row(n.name, escape(role), f"{n.host}:{n.port}", str(n.pid or "-"),
                     n.lsn or "-", escape(state or "-"), lag_bytes,
                     "-" if seconds is None else f"{seconds:.3f}", style=style)
    console = table_console()
    console.print(grid)
    names = {n.host: n.name for n in h.nodes}
    pools = Table(title="pools", title_justify="left")
    for column in ("pool", "port", "servers", "clients active/waiting", "servers active/idle",
                   "transactions", "queries", "avg query"):
        pools.add_column(column, no_wrap=True)
    for p in h.pools.values():
        hosts = ",".join(f"{names.get(a, a)}" for a in p.hosts) + \
            (" (PAUSED)" if p.paused else "")
        if not p.running or p.error:
            pools.add_row(f"pgbouncer-{p.role}", str(p.port), "-",
                          escape(p.error or "not running"), "", "", "", "", style="bold red")
            continue
        active = sum(x.get("cl_active", 0) for x in p.pools)
        waiting = sum(x.get("cl_waiting", 0) for x in p.pools)
        sv_active = sum(x.get("sv_active", 0) for x in p.pools)
        sv_idle = sum(x.get("sv_idle", 0) for x in p.pools)
        xacts = sum(x.get("total_xact_count", 0) for x in p.stats)
        queries = sum(x.get("total_query_count", 0) for x in p.stats)
        avg = max((x.get("avg_query_time", 0) for x in p.stats), default=0)
        pools.add_row(f"pgbouncer-{p.role}", str(p.port), escape(hosts),
                      f"{active}/{waiting}", f"{sv_active}/{sv_idle}", f"{xacts:,}",
                      f"{queries:,}", f"{avg / 1000:.2f} ms")
    console.print(pools)
    for slot in h.slots:
        left = ("" if slot.safe_wal_size is None else
                f"; lost after {decimal(max(0, slot.safe_wal_size))} more of WAL")
        if slot.wal_status == "unreserved":
            print_warning(f"replication slot {slot.name} is beyond max_slot_wal_keep_size: the "
                          "next checkpoint gives it up unless its replica catches up first")
        elif not slot.active and not slot.lost:
            print_warning(f"replication slot {slot.name} is inactive and keeps "
                          f"{decimal(slot.retained_bytes or 0)} of WAL on {h.primary}{left}: "
                          f"`sagaz ha rejoin {slot.name}` (or drop the slot)")
    slots = ", ".join(f"{s.name} {s.wal_status}" + ("" if s.safe_wal_size is None else
                      f" ({decimal(max(0, s.safe_wal_size))} before the cap)")
                      for s in h.slots) or "-"
    out.print(f"replication slots: {slots}", soft_wrap=True)
    partitions = ", ".join(f"{t} {c}" for t, c in h.partitions.items()) or "-"
    out.print(f"partitions: {partitions}", soft_wrap=True)
    out.print("supervisor: " + (f"pid {h.supervisor_pid}" if h.supervisor_pid
                                else "not running (pgbouncer-ro keeps a dead replica)"))
    for error in h.errors:
        print_warning(error)
    out.print("[bold green]healthy[/]" if h.healthy else "[bold red]degraded[/]")
