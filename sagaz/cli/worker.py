"""``sagaz worker``: finishes sagas whose executor died, by calling :func:`sagaz.recover` in a loop.

SIGINT/SIGTERM only set a flag: the pass in progress finishes (a saga half-compensated by this
worker would otherwise wait for its lease to expire and another worker), then the worker exits 0.
A second signal stops it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from functools import partial
from typing import Annotated

import typer
from rich.markup import escape

from sagaz.config import SagaConfig
from sagaz.engine.recovery import RecoveryReport, recover
from sagaz.errors import StorageError

from .common import ExitCode, Storages, execute, run_async
from .loading import import_module, split_module_names
from .output import out, print_error, print_warning

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
        help="Do a single recovery pass and exit (exit 1 if it left sagas unfinished).")] = False,
) -> None:
    """Recover sagas whose executor died (its lease expired): compensate them, or resume those
    defined with recovery="resume". Runs until SIGINT/SIGTERM, finishing the current pass."""

    def body() -> int:
        modules = split_module_names(imports or [])
        for name in modules:
            import_module(name)
        return run_async(partial(_work, modules, interval, once))

    execute(body)


async def _work(modules: list[str], interval: float, once: bool, storages: Storages) -> int:
    config = storages.config()
    if once:
        report = await _pass(config, set())
        if report.errors or report.unknown_definitions:
            return ExitCode.FAILED
        if not report.count:
            out.print("no saga needed recovery")
        return ExitCode.OK
    stop = asyncio.Event()
    _install_signal_handlers(stop)
    where = escape(repr(config.write_storage))
    loaded = ", ".join(modules) or "none"
    out.print(f"worker started on {where} (modules: {escape(loaded)}; every {interval:g}s); "
              "Ctrl-C to stop", soft_wrap=True)
    warned: set[str] = set()
    try:
        while not stop.is_set():
            try:
                await _pass(config, warned)
            except StorageError as exc:
                # A long-running worker outlives a database restart: report it in one line and
                # retry on the next pass. (--once lets the error decide the exit code instead.)
                print_error(f"recovery pass failed: {exc}; retrying in {interval:g}s")
            except Exception:
                # Not expected (a definition that cannot be built, a bug): keep the traceback,
                # keep the worker alive for the sagas that can be recovered.
                logger.exception("recovery pass failed; retrying in %gs", interval,
                                 extra={"action": "worker_pass_failed"})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
    finally:
        _remove_signal_handlers()
    out.print("worker stopped")
    return ExitCode.OK


async def _pass(config: SagaConfig, warned: set[str]) -> RecoveryReport:
    report = await recover(config)
    if report.count:
        out.print(f"recovered {report.count} saga(s)")
        for saga_id, status in report.finished.items():
            out.print(f"  {saga_id}: {status.value}")
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
