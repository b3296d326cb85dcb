"""``sagaz worker``: finishes sagas whose executor died, by calling :func:`sagaz.recover` in a loop.

SIGINT/SIGTERM only set a flag: the pass in progress finishes (a saga half-compensated by this
worker would otherwise wait for its lease to expire and another worker), then the worker exits 0.
A second signal stops it at once.

On a PostgreSQL storage the worker also runs the database maintenance (partitions, inbox cleanup)
on its own schedule, in a thread beside the recovery loop; see :mod:`sagaz.cli.scheduled`. With a
broker it relays the outbox (SQLite or PostgreSQL) and, on SQLite, deletes old SENT events on the
same schedule; see :mod:`sagaz.cli.relay`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Annotated

import typer

from sagaz.config import SagaConfig
from sagaz.engine.recovery import RecoveryReport, recover
from sagaz.engine.waits import resume_due
from sagaz.errors import StorageError

from .common import ExitCode, Storages, execute, run_async
from .loading import import_module, split_module_names
from .output import escape, out, print_error, print_warning
from .relay import SentRetention, relay_due_events, relay_for, retention_for
from .scheduled import MaintenanceSchedule, ScheduledMaintenance

if TYPE_CHECKING:
    from sagaz.outbox.worker import OutboxWorker

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
    database (partitions, inbox) daily."""

    def body() -> int:
        modules = split_module_names(imports or [])
        for name in modules:
            import_module(name)
        schedule = MaintenanceSchedule(maintenance_interval, inbox_retention_days,
                                       maintenance_lock_timeout, maintenance_dsn)
        relaying = _RelayOptions(relay_timeout, outbox_retention_days)
        return run_async(partial(_work, modules, interval, once, schedule, relaying))

    execute(body)


@dataclass(frozen=True, slots=True)
class _RelayOptions:
    timeout: float
    """--once: the relay's deadline."""
    retention_days: int


async def _work(
    modules: list[str], interval: float, once: bool, schedule: MaintenanceSchedule,
    relaying: _RelayOptions, storages: Storages,
) -> int:
    config = storages.config()
    # Resolved before the first pass, so a bad --maintenance-dsn is a usage error at once.
    maintenance = schedule.bind(config.write_storage)
    relay = relay_for(config, schedule.dsn)
    retention = retention_for(relay, relaying.retention_days, schedule.interval)
    try:
        if once:
            return await _work_once(config, maintenance, relay, retention, relaying.timeout)
        return await _work_forever(config, interval, schedule, maintenance, relay, retention,
                                   modules)
    finally:
        if relay is not None:
            await _close_relay(relay)


async def _close_relay(relay: OutboxWorker) -> None:
    # Best effort: the outcome is decided; a broker connection left open would only warn at exit.
    for close in (relay.broker.close, relay.outbox.close):
        try:
            await close()
        except Exception:
            logger.debug("closing the relay's %s failed", close, exc_info=True,
                         extra={"action": "worker_relay_close_failed"})


async def _work_once(
    config: SagaConfig, maintenance: ScheduledMaintenance | None, relay: OutboxWorker | None,
    retention: SentRetention | None, relay_timeout: float,
) -> int:
    report = await _pass(config, set())
    relay_failure = None
    if relay is not None:
        relay_failure = await relay_due_events(relay, relay_timeout)
        if relay_failure is not None:
            print_error(relay_failure)
        else:
            out.print(f"relayed {relay.relayed} event(s)")
    if retention is not None:
        await retention.run_once()
    if maintenance is not None:
        # Recovery decides the exit code; a maintenance failure is only logged (as in the
        # loop), so a cron job running --once is not flagged for a busy table.
        await maintenance.run_once()
    if report.errors or report.unknown_definitions or relay_failure is not None:
        return ExitCode.FAILED
    if not report.count:
        out.print("no saga needed recovery")
    return ExitCode.OK


async def _work_forever(
    config: SagaConfig, interval: float, schedule: MaintenanceSchedule,
    maintenance: ScheduledMaintenance | None, relay: OutboxWorker | None,
    retention: SentRetention | None, modules: list[str],
) -> int:
    stop = asyncio.Event()
    _install_signal_handlers(stop)
    where = escape(repr(config.write_storage))
    loaded = ", ".join(modules) or "none"
    every = (f"; maintenance every {schedule.interval:g}s" if maintenance is not None else "")
    every += "; outbox relay on" if relay is not None else ""
    every += (f" (SENT events kept {retention.days} days)" if retention is not None else "")
    out.print(f"worker started on {where} (modules: {escape(loaded)}; every {interval:g}s"
              f"{every}); Ctrl-C to stop", soft_wrap=True)
    warned: set[str] = set()
    maintaining: asyncio.Task[None] | None = None
    relaying: asyncio.Task[None] | None = None
    pruning: asyncio.Task[None] | None = None
    try:
        while not stop.is_set():
            try:
                await _pass(config, warned)
            except StorageError as exc:
                if exc.connection_rejected:
                    raise  # wrong credentials or database: no later pass can do better (exit 3)
                # A long-running worker outlives a database restart: report it in one line and
                # retry on the next pass. (--once lets the error decide the exit code instead.)
                print_error(f"recovery pass failed: {exc}; retrying in {interval:g}s")
            except Exception:
                # Not expected (a definition that cannot be built, a bug): keep the traceback,
                # keep the worker alive for the sagas that can be recovered.
                logger.exception("recovery pass failed; retrying in %gs", interval,
                                 extra={"action": "worker_pass_failed"})
            if maintenance is not None and maintaining is None:
                # Started after the first pass: that pass opened the storage, which applies the
                # migrations maintenance needs. Its own task, so a slow run never delays recovery.
                maintaining = asyncio.create_task(maintenance.run_forever(stop))
            if relay is not None and relaying is None:
                relaying = asyncio.create_task(relay.run(stop))
            if retention is not None and pruning is None:
                pruning = asyncio.create_task(retention.run_forever(stop))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
    finally:
        _remove_signal_handlers()
        for scheduled in (maintaining, pruning):
            if scheduled is not None:
                scheduled.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await scheduled
        if relaying is not None:
            # run() returns once stop is set and its batches in flight are marked.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(relaying, 30)
    out.print("worker stopped")
    return ExitCode.OK


async def _pass(config: SagaConfig, warned: set[str]) -> RecoveryReport:
    report = await recover(config)
    if report.count:
        out.print(f"recovered {report.count} saga(s)")
        for saga_id, status in report.finished.items():
            out.print(f"  {saga_id}: {status.value}")
    # Parked sagas whose timer fired or that got a signal: one indexed query finds them.
    resumed = await resume_due(config)
    if resumed.count:
        out.print(f"resumed {resumed.count} waiting saga(s)")
    report.unknown_definitions.update(resumed.unknown_definitions)
    report.errors.update(resumed.errors)
    for saga_id, name in report.unknown_definitions.items():
        # The same orphan is claimed again every lease period; say it once per worker.
        if saga_id not in warned:
            warned.add(saga_id)
            print_warning(f"saga {saga_id} ({name!r}) cannot be recovered: no definition named "
                          f"{name!r} is registered; start the worker with --import MODULE for "
                          "the module that defines it")
    for saga_id, error in report.errors.items():
        print_error(f"recovering saga {saga_id} failed: {type(error).__name__}: {error}")
    logger.debug("recovery pass: %d finished, %d unknown, %d errors", report.count,
                len(report.unknown_definitions), len(report.errors),
                extra={"action": "worker_pass"})
    return report


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        out.print(f"{signum.name} received: finishing the current pass, then stopping")
        stop.set()
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
