"""``sagaz.Worker``: the background half of sagaz in one object, for ``sagaz worker`` and for
programs that embed it.

What it runs, each only when the configuration offers it (:mod:`sagaz.worker_jobs`):

- the **recovery loop**: every ``interval`` seconds, one pass of the periodic engine tasks
  (:meth:`Worker.engine_pass`: :func:`sagaz.recover`, which finishes sagas whose executor
  died, then :func:`~sagaz.engine.waits.resume_due`, which resumes parked sagas whose timer
  fired or that got a signal);
- the **scheduled maintenance** of a storage that has one (PostgreSQL: partitions, inbox);
- the **outbox relay** when a broker is configured and the storage keeps an outbox, and on
  SQLite the deletion of SENT events past their retention.

:meth:`Worker.stop` drains gracefully: the pass in progress finishes (a saga half-compensated by
this worker would otherwise wait for its lease to expire and another worker), the relay's
batches in flight are marked, then the connections close.

    worker = sagaz.Worker(config, interval=5)
    await worker.start()
    ...
    await worker.stop()

or ``async with sagaz.Worker(config) as worker: ...``, or ``await worker.run_once()`` for one
pass of everything (a cron job).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from sagaz.config import SagaConfig, get_config
from sagaz.engine.recovery import RecoveryReport, recover
from sagaz.engine.waits import ResumeReport, resume_due
from sagaz.errors import ConfigurationError, StorageError
from sagaz.worker_jobs import (
    ScheduledMaintenance,
    SentRetention,
    close_relay,
    relay_due_events,
    relay_for,
    retention_for,
)

if TYPE_CHECKING:
    from sagaz.engine.definition import Saga
    from sagaz.observability.metrics import Metrics
    from sagaz.observability.server import MetricsServer
    from sagaz.outbox.worker import OutboxWorker
    from sagaz.storage.postgresql.maintenance import MaintenanceReport

__all__ = ["OnceReport", "Worker", "WorkerListener"]

logger = logging.getLogger(__name__)

_POSTGRES_SCHEMES = ("postgresql", "postgres")


class WorkerListener:
    """What a worker reports as it goes; override what you need (``sagaz worker`` prints them).
    Listener errors are logged and never stop the worker."""

    def started(self, worker: Worker) -> None:
        """The worker is running (its first pass follows)."""

    def recovery_pass(self, report: RecoveryReport) -> None:
        """A recovery pass ended (also when it recovered nothing)."""

    def waits_resumed(self, report: ResumeReport) -> None:
        """A pass resumed parked sagas (called only when it resumed some)."""

    def recovery_failed(self, error: BaseException, retry_in: float) -> None:
        """A recovery pass failed (the storage is away); the next one follows."""

    def maintenance_done(self, report: MaintenanceReport) -> None:
        """A scheduled maintenance run ended (failures are in ``report.failures``)."""

    def retention_done(self, deleted: int, days: int) -> None:
        """The SENT events older than ``days`` days were deleted."""

    def stopping(self) -> None:
        """:meth:`Worker.stop` was called: the current pass finishes, then the worker stops."""

    def stopped(self) -> None:
        """The worker stopped and closed what it opened."""


@dataclass
class OnceReport:
    """What :meth:`Worker.run_once` did."""

    recovery: RecoveryReport
    relay_failure: str | None = None
    """Why the relay could not send what was due (broker unreachable, deadline), or None."""
    relayed: int = 0

    @property
    def ok(self) -> bool:
        """Nothing left unfinished: no recovery error or stuck saga (unknown definition, or not
        the one it started with), no relay failure."""
        return not (self.recovery.errors or self.recovery.stuck
                    or self.relay_failure is not None)


@dataclass
class _Health:
    """What /healthz reports: the loops are alive and the recovery loop keeps its pace."""

    last_pass: float | None = None
    """time.monotonic() of the last recovery pass that ran (failed or not)."""
    failed_tasks: list[str] = field(default_factory=list)


class Worker:
    """Recovery, scheduled maintenance and the outbox relay for one configuration.

    Options (the same as ``sagaz worker``'s): ``interval`` between recovery passes;
    ``maintenance_interval`` (0: never), ``inbox_retention_days`` and
    ``maintenance_lock_timeout`` of the scheduled maintenance; ``maintenance_dsn``, a direct
    connection for maintenance and the relay's LISTEN (else the storage's own);
    ``relay_timeout``, the relay's deadline in :meth:`run_once`; ``outbox_retention_days`` of
    SENT events (SQLite); ``drain_timeout``, how long :meth:`stop` waits for the relay's batches
    in flight; ``sagas``, definitions to recover beside the registered ones; ``metrics_port``
    (None: none) and ``metrics_host`` of the ``/metrics``, ``/healthz`` and ``/readyz``
    endpoint that :meth:`start` opens, with the figures of ``metrics`` (a new
    :class:`~sagaz.observability.metrics.Metrics` by default)."""

    def __init__(
        self,
        config: SagaConfig | None = None,
        *,
        sagas: Iterable[Saga] = (),
        interval: float = 5.0,
        maintenance_interval: float = 86400.0,
        inbox_retention_days: int = 90,
        maintenance_lock_timeout: float = 5.0,
        maintenance_dsn: str | None = None,
        relay_timeout: float = 30.0,
        outbox_retention_days: int = 30,
        drain_timeout: float = 30.0,
        listeners: Iterable[WorkerListener] = (),
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        metrics: Metrics | None = None,
    ):
        if not interval > 0:
            raise ConfigurationError(f"interval must be a number of seconds > 0, got {interval!r}")
        self._config = config
        self.sagas = list(sagas)
        self.interval = interval
        self.maintenance_interval = maintenance_interval
        self.inbox_retention_days = inbox_retention_days
        self.maintenance_lock_timeout = maintenance_lock_timeout
        self.maintenance_dsn = _check_maintenance_dsn(maintenance_dsn)
        self.relay_timeout = relay_timeout
        self.outbox_retention_days = outbox_retention_days
        self.drain_timeout = drain_timeout
        self.listeners = list(listeners)
        self.maintenance: ScheduledMaintenance | None = None
        self.relay: OutboxWorker | None = None
        self.retention: SentRetention | None = None
        self._bound = False
        self._stop = asyncio.Event()
        self._main: asyncio.Task[None] | None = None
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self.health = _Health()
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.metrics = metrics
        self.metrics_server: MetricsServer | None = None

    @property
    def config(self) -> SagaConfig:
        """The configuration worked on (the global one when none was given)."""
        if self._config is None:
            self._config = get_config()
        return self._config

    def bind(self) -> None:
        """Find what to run in the configuration (done by :meth:`start` and :meth:`run_once`;
        call it first to inspect :attr:`maintenance`, :attr:`relay` and :attr:`retention`)."""
        if self._bound:
            return
        config = self.config
        self.maintenance = ScheduledMaintenance.for_storage(
            config.write_storage, interval=self.maintenance_interval,
            inbox_retention_days=self.inbox_retention_days,
            lock_timeout=self.maintenance_lock_timeout, dsn=self.maintenance_dsn,
            on_done=self._listener_call("maintenance_done"))
        self.relay = relay_for(config, self.maintenance_dsn)
        days = self.outbox_retention_days
        self.retention = retention_for(
            self.relay, days, self.maintenance_interval,
            lambda deleted: self._notify("retention_done", deleted, days))
        self._bound = True

    # -- the periodic engine tasks -------------------------------------------------------------

    async def engine_pass(self) -> RecoveryReport:
        """One pass of the engine's periodic tasks, every ``interval`` seconds: the one place
        where such tasks run (one after another, so each sees the others' commits). Today:
        recovery of sagas whose executor died, then the parked sagas that are due (one indexed
        query). What cannot be resumed counts in the report like what cannot be recovered."""
        report = await recover(self.config, sagas=self.sagas)
        resumed = await resume_due(self.config, sagas=self.sagas)
        report.unknown_definitions.update(resumed.unknown_definitions)
        report.errors.update(resumed.errors)
        if resumed.count:
            self._notify("waits_resumed", resumed)
        logger.debug("recovery pass: %d finished, %d unknown, %d errors", report.count,
                     len(report.unknown_definitions), len(report.errors),
                     extra={"action": "worker_pass"})
        self._notify("recovery_pass", report)
        return report

    # -- one pass of everything ------------------------------------------------------------------

    async def run_once(self) -> OnceReport:
        """One engine pass, then (when configured) relay what is due within ``relay_timeout``,
        delete old SENT events and run the maintenance once; closes the relay's connections.
        The maintenance's outcome is only logged, as in the loop, so that a cron job is not
        flagged for a busy table."""
        self.bind()
        try:
            report = OnceReport(await self.engine_pass())
            if self.relay is not None:
                report.relay_failure = await relay_due_events(self.relay, self.relay_timeout)
                report.relayed = self.relay.relayed
            if self.retention is not None:
                await self.retention.run_once()
            if self.maintenance is not None:
                await self.maintenance.run_once()
            return report
        finally:
            if self.relay is not None:
                await close_relay(self.relay)

    # -- running until stopped ---------------------------------------------------------------

    async def start(self) -> None:
        """Start the loops in tasks of the running event loop; returns at once."""
        if self._main is not None:
            raise RuntimeError("this worker was started already")
        self.bind()
        self._stop.clear()
        if self.metrics_port is not None:
            self._serve_metrics(self.metrics_port)
        self._notify("started", self)
        self._main = asyncio.get_running_loop().create_task(self._run_loop())

    def _serve_metrics(self, port: int) -> None:
        from sagaz.observability.endpoint import serve_metrics
        from sagaz.observability.metrics import Metrics

        metrics = self.metrics = self.metrics or Metrics()
        metrics.instrument(self.config)
        if self.relay is not None:
            metrics.instrument_relay(self.relay)
        self.metrics_server = serve_metrics(
            port=port, host=self.metrics_host, metrics=metrics, config=self.config,
            healthy=self.alive)

    async def wait(self) -> None:
        """Until the worker stopped; raises what ended it (a storage refusing the connection:
        wrong credentials or database, which no later pass can fix)."""
        if self._main is None:
            raise RuntimeError("start() the worker first")
        await asyncio.shield(self._main)

    async def stop(self) -> None:
        """Finish the pass in progress and the relay's batches in flight, stop the loops and
        close the relay's connections. Safe to call more than once; re-raises nothing."""
        if self._main is None:
            return
        if not self._stop.is_set():
            self._notify("stopping")
        self._stop.set()
        with contextlib.suppress(Exception):
            await asyncio.shield(self._main)

    async def run(self) -> None:
        """:meth:`start`, then :meth:`wait` (until :meth:`stop` from elsewhere, e.g. a signal
        handler)."""
        await self.start()
        await self.wait()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def alive(self) -> tuple[bool, str]:
        """Whether the loops run: the main loop is running, no job died, and the last
        recovery pass is recent (a pass may take long: 3 intervals plus a minute of slack)."""
        if self._main is None or self._main.done():
            return False, "the worker is not running"
        if self.health.failed_tasks:
            return False, f"stopped unexpectedly: {', '.join(self.health.failed_tasks)}"
        last = self.health.last_pass
        if last is not None and time.monotonic() - last > 3 * self.interval + 60:
            return False, f"no recovery pass for {time.monotonic() - last:.0f}s"
        return True, "ok"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _run_loop(self) -> None:
        try:
            while not self._stop.is_set():
                await self._guarded_pass()
                self._start_jobs()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=self.interval)
        finally:
            self._stop.set()
            try:
                await self._drain()
            finally:
                if self.metrics_server is not None:
                    self.metrics_server.stop()
                self._notify("stopped")

    async def _guarded_pass(self) -> None:
        try:
            await self.engine_pass()
        except StorageError as exc:
            if exc.connection_rejected:
                raise  # wrong credentials or database: no later pass can do better
            # A long-running worker outlives a database restart: report it and retry on the
            # next pass.
            logger.warning("recovery pass failed: %s; retrying in %gs", exc, self.interval,
                           extra={"action": "worker_pass_failed"})
            self._notify("recovery_failed", exc, self.interval)
        except Exception:
            # Not expected (a definition that cannot be built, a bug): keep the traceback,
            # keep the worker alive for the sagas that can be recovered.
            logger.exception("recovery pass failed; retrying in %gs", self.interval,
                             extra={"action": "worker_pass_failed"})
        finally:
            self.health.last_pass = time.monotonic()

    def _start_jobs(self) -> None:
        # Started after the first pass: that pass opened the storage, which applies the
        # migrations maintenance needs. Each in its own task, so a slow run never delays
        # recovery.
        loop = asyncio.get_running_loop()
        wanted: dict[str, Callable[[asyncio.Event], Any] | None] = {
            "maintenance": self.maintenance.run_forever if self.maintenance else None,
            "relay": self.relay.run if self.relay else None,
            "retention": self.retention.run_forever if self.retention else None,
        }
        for name, job in wanted.items():
            if job is not None and name not in self._jobs:
                task = loop.create_task(job(self._stop), name=f"sagaz-worker-{name}")
                task.add_done_callback(self._job_ended)
                self._jobs[name] = task

    def _job_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and not self._stop.is_set():
            self.health.failed_tasks.append(task.get_name())
            logger.error("worker job %s stopped: %s", task.get_name(), task.exception(),
                         exc_info=task.exception(), extra={"action": "worker_job_failed"})

    async def _drain(self) -> None:
        for name in ("maintenance", "retention"):
            scheduled = self._jobs.get(name)
            if scheduled is not None:
                scheduled.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await scheduled
        relaying = self._jobs.get("relay")
        if relaying is not None:
            # run() returns once stop is set and its batches in flight are marked.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(relaying, self.drain_timeout)
        if self.relay is not None:
            await close_relay(self.relay)

    # -- listeners -------------------------------------------------------------------------------

    def _listener_call(self, method: str) -> Callable[..., None]:
        return lambda *args: self._notify(method, *args)

    def _notify(self, method: str, *args: Any) -> None:
        for listener in self.listeners:
            try:
                getattr(listener, method)(*args)
            except Exception:
                logger.exception("worker listener %r failed in %s", listener, method,
                                 extra={"action": "worker_listener_failed"})


def _check_maintenance_dsn(dsn: str | None) -> str | None:
    """A blank DSN is none; one with a scheme must be PostgreSQL's (libpq key=value pairs are
    checked by the driver)."""
    if dsn is None or not dsn.strip():
        return None
    dsn = dsn.strip()
    scheme = dsn.split("://", 1)[0].lower() if "://" in dsn else ""
    if "://" in dsn and scheme not in _POSTGRES_SCHEMES:
        raise ConfigurationError(
            f"maintenance_dsn is a {scheme or 'scheme-less'}:// URL, not PostgreSQL: use "
            "postgresql://user@host:port/dbname (a direct connection to the primary)")
    return dsn
