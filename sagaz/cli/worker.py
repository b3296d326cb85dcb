"""``sagaz worker``: a thin shell over :class:`sagaz.Worker` (recovery loop, scheduled
maintenance, outbox relay), printing what it reports.

SIGINT/SIGTERM call :meth:`sagaz.Worker.stop`: the pass in progress finishes (a saga
half-compensated by this worker would otherwise wait for its lease to expire and another
worker), then the worker exits 0. A second signal stops it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sagaz.worker import Worker, WorkerListener

from .common import ExitCode, Storages, execute, run_async
from .db import require_postgres
from .loading import import_module, split_module_names
from .output import escape, out, print_error, print_warning

if TYPE_CHECKING:
    from sagaz.engine.recovery import RecoveryReport
    from sagaz.engine.waits import ResumeReport
    from sagaz.storage.postgresql.maintenance import MaintenanceReport

__all__ = ["worker"]

logger = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def worker(
    imports: Annotated[list[str] | None, typer.Option(
        "--import", "-i", envvar="SAGAZ_WORKER_IMPORTS", metavar="MODULE",
        help="Module defining sagas to recover (repeatable; the variable takes a space- or "
             "comma-separated list). Sagas register themselves when imported.")] = None,
    interval: Annotated[float, typer.Option(
        "--interval", min=0.01, envvar="SAGAZ_WORKER_INTERVAL", metavar="SECONDS",
        help="Pause between two recovery passes.")] = 5.0,
    once: Annotated[bool, typer.Option(
        "--once", envvar="SAGAZ_WORKER_ONCE",
        help="Do a single recovery pass and exit (exit 1 if it left sagas unfinished); with a "
             "PostgreSQL storage, one maintenance run follows it.")] = False,
    maintenance_interval: Annotated[float, typer.Option(
        "--maintenance-interval", min=0, envvar="SAGAZ_MAINTENANCE_INTERVAL", metavar="SECONDS",
        help="PostgreSQL storage only: run the partition maintenance and the consumer-inbox "
             "cleanup when the worker starts, then every SECONDS (0: never, e.g. when pg_cron or "
             "a cron job runs `sagaz db maintain`). A failed run is retried at the next one and "
             "never stops recovery.")] = 86400.0,
    inbox_retention_days: Annotated[int, typer.Option(
        "--inbox-retention-days", min=0, max=36500, envvar="SAGAZ_INBOX_RETENTION_DAYS",
        metavar="DAYS",
        help="The scheduled cleanup deletes consumer_inbox rows processed more than DAYS ago; "
             "keep it longer than any broker redelivery window.")] = 90,
    maintenance_lock_timeout: Annotated[float, typer.Option(
        "--maintenance-lock-timeout", min=0.001, envvar="SAGAZ_MAINTENANCE_LOCK_TIMEOUT",
        metavar="SECONDS",
        help="How long maintenance waits for a table lock before leaving that table for the "
             "next run.")] = 5.0,
    relay_timeout: Annotated[float, typer.Option(
        "--relay-timeout", min=0.1, envvar="SAGAZ_RELAY_TIMEOUT", metavar="SECONDS",
        help="With --once and SAGAZ_BROKER_URL: how long the outbox relay may take to reach the "
             "broker and send what is due; past it (or with the broker unreachable) the worker "
             "exits 1 saying why. Without --once the relay retries with backoff instead.")] = 30.0,
    outbox_retention_days: Annotated[int, typer.Option(
        "--outbox-retention-days", min=0, max=36500, envvar="SAGAZ_OUTBOX_RETENTION_DAYS",
        metavar="DAYS",
        help="SQLite storage with a relay: on the maintenance schedule, delete outbox events "
             "SENT more than DAYS ago (PostgreSQL drops whole partitions instead; dead letters "
             "stay until `sagaz outbox dlq purge`).")] = 30,
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", min=0, max=65535, envvar="SAGAZ_METRICS_PORT", metavar="PORT",
        show_default=False,
        help="Serve /metrics (Prometheus), /healthz (the worker's loops run) and /readyz (the "
             "storage answers) on PORT, e.g. 9464. Not with --once.")] = None,
    metrics_host: Annotated[str, typer.Option(
        "--metrics-host", envvar="SAGAZ_METRICS_HOST", metavar="ADDRESS",
        help="Address the metrics endpoint listens on; loopback by default, 0.0.0.0 (or the "
             "pod's address) for a Prometheus on another host.")] = "127.0.0.1",
    maintenance_dsn: Annotated[str | None, typer.Option(
        "--maintenance-dsn", envvar="SAGAZ_DATABASE_URL", metavar="URL", show_default=False,
        help="Connection for maintenance, preferably direct to the primary rather than through "
             "PgBouncer. Default: the storage's (SAGAZ_STORAGE_URL).")] = None,
) -> None:
    """Recover sagas whose executor died (its lease expired): compensate them, or resume those
    defined with recovery="resume". Runs until SIGINT/SIGTERM, finishing the current pass. With
    SAGAZ_BROKER_URL it also relays the outbox's events to the broker (SQLite or PostgreSQL; on
    PostgreSQL woken by NOTIFY when SAGAZ_DATABASE_URL gives a direct connection; on SQLite it
    deletes SENT events past their retention). On a PostgreSQL storage it also maintains the
    database (partitions, inbox) daily. With --metrics-port it serves /metrics, /healthz and
    /readyz for Prometheus and Kubernetes probes."""

    def body() -> int:
        modules = split_module_names(imports or [])
        for name in modules:
            import_module(name)
        if maintenance_dsn and maintenance_dsn.strip():
            require_postgres(maintenance_dsn.strip(), "--maintenance-dsn (or SAGAZ_DATABASE_URL)")
        options = {"interval": interval, "maintenance_interval": maintenance_interval,
                   "metrics_port": None if once else metrics_port, "metrics_host": metrics_host,
                   "inbox_retention_days": inbox_retention_days,
                   "maintenance_lock_timeout": maintenance_lock_timeout,
                   "maintenance_dsn": maintenance_dsn, "relay_timeout": relay_timeout,
                   "outbox_retention_days": outbox_retention_days}
        return run_async(partial(_work, modules, once, options))

    execute(body)


async def _work(
    modules: list[str], once: bool, options: dict[str, Any], storages: Storages,
) -> int:
    printer = _Printer(modules)
    worker = Worker(storages.config(), listeners=[printer], **options)
    # Resolved before the first pass, so a bad configuration is a usage error at once.
    worker.bind()
    if once:
        report = await worker.run_once()
        if worker.relay is not None:
            if report.relay_failure is not None:
                print_error(report.relay_failure)
            else:
                out.print(f"relayed {report.relayed} event(s)")
        if not report.ok:
            return ExitCode.FAILED
        if not report.recovery.count:
            out.print("no saga needed recovery")
        return ExitCode.OK
    _install_signal_handlers(worker)
    try:
        await worker.run()
    finally:
        _remove_signal_handlers()
    return ExitCode.OK


class _Printer(WorkerListener):
    """What the worker reports, as the lines ``sagaz worker`` prints."""

    def __init__(self, modules: list[str]):
        self.modules = modules
        self.warned: set[str] = set()
        """Sagas without a definition, said once per worker (they are claimed every lease)."""

    def started(self, worker: Worker) -> None:
        where = escape(repr(worker.config.write_storage))
        loaded = ", ".join(self.modules) or "none"
        every = (f"; maintenance every {worker.maintenance_interval:g}s"
                 if worker.maintenance is not None else "")
        every += "; outbox relay on" if worker.relay is not None else ""
        if worker.retention is not None:
            every += f" (SENT events kept {worker.retention.days} days)"
        if worker.metrics_server is not None:
            every += f"; metrics on {worker.metrics_server.url}/metrics"
        out.print(f"worker started on {where} (modules: {escape(loaded)}; every "
                  f"{worker.interval:g}s{every}); Ctrl-C to stop", soft_wrap=True)

    def recovery_pass(self, report: RecoveryReport) -> None:
        if report.count:
            out.print(f"recovered {report.count} saga(s)")
            for saga_id, status in report.finished.items():
                out.print(f"  {saga_id}: {status.value}")
        for saga_id, name in report.unknown_definitions.items():
            if saga_id not in self.warned:
                self.warned.add(saga_id)
                print_warning(f"saga {saga_id} ({name!r}) cannot be recovered: no definition "
                              f"named {name!r} is registered; start the worker with --import "
                              "MODULE for the module that defines it")
        for saga_id, why in report.stuck.items():
            if saga_id not in self.warned and saga_id not in report.unknown_definitions:
                self.warned.add(saga_id)
                print_warning(f"saga {saga_id} left untouched: {why}; `sagaz sagas "
                              "check-versions` lists such sagas, `sagaz sagas resume` migrates one")
        for saga_id, error in report.errors.items():
            print_error(f"recovering saga {saga_id} failed: {type(error).__name__}: {error}")

    def waits_resumed(self, report: ResumeReport) -> None:
        out.print(f"resumed {report.count} waiting saga(s)")

    def maintenance_done(self, report: MaintenanceReport) -> None:
        out.print(_summary(report), soft_wrap=True)

    def retention_done(self, deleted: int, days: int) -> None:
        if deleted:
            out.print(f"outbox: {deleted} SENT event(s) older than {days} day(s) deleted")

    def stopped(self) -> None:
        out.print("worker stopped")


def _summary(report: MaintenanceReport) -> str:
    changes = [f"{a.action} {a.partition_name}" for a in report.actions
               if a.action != "analyzed" and a.partition_name]
    partitions = ", ".join(changes) if changes else "partitions up to date"
    inbox = ("" if report.inbox_deleted is None
             else f"; {report.inbox_deleted} old consumer_inbox row(s) deleted")
    return f"maintenance: {partitions}{inbox}"


def _install_signal_handlers(worker: Worker) -> None:
    loop = asyncio.get_running_loop()
    stopping: set[asyncio.Task[None]] = set()

    def on_signal(signum: signal.Signals) -> None:
        out.print(f"{signum.name} received: finishing the current pass, then stopping")
        task = loop.create_task(worker.stop())
        stopping.add(task)  # referenced until done
        task.add_done_callback(stopping.discard)
        # Back to the default handlers: a second signal interrupts at once.
        _remove_signal_handlers()

    for signum in _STOP_SIGNALS:
        try:
            loop.add_signal_handler(signum, on_signal, signum)
        except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
            logger.debug("cannot handle %s here", signum.name)


def _remove_signal_handlers() -> None:
    loop = asyncio.get_running_loop()
    for signum in _STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signum)
