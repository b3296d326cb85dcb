"""``sagaz metrics serve``: the Prometheus endpoint of the database side, beside the workers'
own (``sagaz worker --metrics-port``): the outbox backlog of SAGAZ_STORAGE_URL and, given where
they are, the HA figures (replication lag, PgBouncer pools, partitions, which nodes are up), all
read on scrape, each within --scrape-timeout."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sagaz.observability.scrape import DEFAULT_TIMEOUT
from sagaz.observability.server import DEFAULT_HOST, DEFAULT_PORT

from .common import ExitCode, Storages, execute, fail, run_async
from .output import out

if TYPE_CHECKING:
    from collections.abc import Callable

    from sagaz.observability.ha_metrics import HaTargets

__all__ = ["metrics_app"]

metrics_app = typer.Typer(name="metrics", no_args_is_help=True, help=(
    "Prometheus metrics: `serve` exposes /metrics, /healthz and /readyz. The workers' own "
    "figures (sagas, relay, write path) come from `sagaz worker --metrics-port`."))

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")


@metrics_app.command("serve")
def serve_command(
    port: Annotated[int, typer.Option(
        "--port", min=0, max=65535, envvar="SAGAZ_METRICS_PORT", metavar="PORT",
        help="Port of /metrics, /healthz and /readyz.")] = DEFAULT_PORT,
    host: Annotated[str, typer.Option(
        "--host", envvar="SAGAZ_METRICS_HOST", metavar="ADDRESS",
        help="Address to listen on; loopback by default, 0.0.0.0 (or the pod's address) for "
             "a Prometheus on another host.")] = DEFAULT_HOST,
    cluster: Annotated[Path | None, typer.Option(
        "--cluster", envvar="SAGAZ_METRICS_CLUSTER", metavar="DIR", file_okay=False,
        show_default=False,
        help="The local cluster of `sagaz dev up --dir DIR`: every node, both PgBouncers and "
             "the primary, found again on each scrape (after a failover too).")] = None,
    primary: Annotated[str | None, typer.Option(
        "--primary", envvar="SAGAZ_METRICS_PRIMARY", metavar="URL", show_default=False,
        help="The primary (a role in pg_monitor), for the replication lag and the partition "
             "figures.")] = None,
    nodes: Annotated[list[str] | None, typer.Option(
        "--node", envvar="SAGAZ_METRICS_NODES", metavar="NAME=URL",
        help="A PostgreSQL node for sagaz_postgres_up (repeatable; the variable takes a "
             "space-separated list).")] = None,
    pgbouncers: Annotated[list[str] | None, typer.Option(
        "--pgbouncer", envvar="SAGAZ_METRICS_PGBOUNCERS", metavar="POOL=URL",
        help="A PgBouncer console (dbname pgbouncer, a stats user) for the pool POOL, e.g. "
             "rw=postgresql://stats@127.0.0.1:6432/pgbouncer (repeatable).")] = None,
    pool_database: Annotated[str | None, typer.Option(
        "--pool-database", envvar="SAGAZ_METRICS_POOL_DATABASE", metavar="NAME",
        show_default=False,
        help="Count only the PgBouncer pools of this database (default: all).")] = None,
    scrape_timeout: Annotated[float, typer.Option(
        "--scrape-timeout", min=0.1, max=60, envvar="SAGAZ_METRICS_SCRAPE_TIMEOUT",
        metavar="SECONDS",
        help="How long each component (node, pool, outbox) may take; one that does not answer "
             "in time yields sagaz_scrape_error{component} 1 instead.")] = DEFAULT_TIMEOUT,
) -> None:
    """Serve the metrics read from the databases on each scrape, until SIGINT/SIGTERM:
    sagaz_outbox_pending_events and sagaz_outbox_dead_letter_events of SAGAZ_STORAGE_URL, and
    with --cluster (or --primary, --node, --pgbouncer) the replication lag, the PgBouncer pools,
    the partitions and sagaz_postgres_up. /readyz answers 200 while the storage answers."""

    def body() -> int:
        targets = _targets(cluster, primary, nodes or [], pgbouncers or [], pool_database)
        return run_async(partial(_serve, port, host, targets, scrape_timeout))

    execute(body)


def _targets(
    cluster: Path | None, primary: str | None, nodes: list[str], pgbouncers: list[str],
    database: str | None,
) -> Callable[[], HaTargets] | None:
    if cluster is None and primary is None and not nodes and not pgbouncers:
        return None
    try:
        from sagaz.observability.ha_metrics import HaTargets, cluster_targets
    except ImportError:
        fail("the HA metrics need PostgreSQL support (psycopg is missing); install it with: "
             "pip install 'sagaz[postgres]'")
    if cluster is not None:
        if primary or nodes or pgbouncers:
            fail("--cluster finds the nodes and pools itself: leave out --primary, --node and "
                 "--pgbouncer (or drop --cluster)")
        if not (cluster / "cluster.json").is_file():
            fail(f"--cluster {cluster}: no cluster.json there; give the --dir of `sagaz dev up`")
        return partial(cluster_targets, cluster)
    fixed = HaTargets(
        primary=primary or None,
        nodes={name: (url, "unknown") for name, url in _pairs("--node", nodes).items()},
        pgbouncers=_pairs("--pgbouncer", pgbouncers), database=database)
    return lambda: fixed


def _pairs(option: str, values: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for value in values:
        name, sep, url = value.partition("=")
        if not sep or not url.strip() or not _NAME.match(name):
            fail(f"{option} takes NAME=URL with a NAME of letters, digits, '.', '_' or '-' "
                 f"(e.g. {option} node1=postgresql://monitor@10.0.0.2:5432/app)")
        if name in found:
            fail(f"{option} {name} is given twice; give each name once")
        found[name] = url.strip()
    return found


async def _serve(
    port: int, host: str, targets: Callable[[], HaTargets] | None, scrape_timeout: float,
    storages: Storages,
) -> int:
    from sagaz.observability.endpoint import serve_metrics

    config = storages.config()
    server = serve_metrics(port=port, host=host, config=config, ha=targets,
                           timeout=scrape_timeout)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    out.print(f"metrics on {server.url}/metrics (health: /healthz, /readyz); Ctrl-C to stop",
              soft_wrap=True)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)
        # The scrape threads may be inside a coroutine of this loop: stop serving first.
        await asyncio.to_thread(server.stop)
    out.print("metrics stopped")
    return ExitCode.OK
