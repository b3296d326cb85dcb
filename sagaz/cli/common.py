"""What every command shares: exit codes, user-facing errors, and the async scope that always
closes the storages a command opened (SQLite keeps a connection thread open until closed)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

from sagaz.config import SagaConfig, get_config
from sagaz.errors import ConfigurationError, SagaDefinitionError, StorageError
from sagaz.observability.logs import LogContextListener
from sagaz.private_files import HoldsPrivateFiles, loose_mode_warnings

from .output import print_error, print_warning

if TYPE_CHECKING:
    from sagaz.engine.definition import Saga
    from sagaz.storage.base import SagaStorage

__all__ = ["MAX_LIMIT", "MAX_OFFSET", "CliError", "ExitCode", "Storages", "execute", "fail",
           "run_async", "warn_loose_modes"]

logger = logging.getLogger(__name__)

MAX_LIMIT = 1_000_000
"""The largest --limit of a listing: beyond a million rows, export with SQL instead."""
MAX_OFFSET = 2**63 - 1
"""The largest --offset: a 64-bit integer, what SQLite and PostgreSQL (bigint) accept."""


class ExitCode(IntEnum):
    """The exit codes of every command; ``sagaz --help`` documents them."""

    OK = 0
    FAILED = 1
    """The command ran, but the outcome is negative: the saga failed (it was compensated), the
    saga id does not exist, or a worker pass left sagas unfinished."""
    USAGE = 2
    """What was typed or configured must change: bad arguments, a malformed SAGAZ_* variable, a
    module or saga that cannot be loaded, an invalid saga definition or context."""
    STORAGE = 3
    """The storage failed or refused an operation (unreachable database, read-only replica...)."""
    INTERRUPTED = 130


class CliError(Exception):
    """An error the user can fix; printed as one line, never with a traceback."""

    def __init__(self, message: str, code: ExitCode = ExitCode.USAGE):
        super().__init__(message)
        self.message = message
        self.code = code


def execute(body: Callable[[], int]) -> NoReturn:
    """Run a command body and exit with its code, turning expected errors into one-line messages
    and the documented exit codes. Unexpected exceptions (bugs) keep their traceback."""
    try:
        code = body()
    except CliError as exc:
        print_error(exc.message)
        code = exc.code
    except (ConfigurationError, SagaDefinitionError) as exc:
        # Both messages already say what to change (and name the SAGAZ_* variable at fault).
        print_error(str(exc))
        code = ExitCode.USAGE
    except StorageError as exc:
        print_error(f"storage error: {exc}")
        code = ExitCode.STORAGE
    except KeyboardInterrupt:
        print_error("interrupted; a saga left unfinished is finished by `sagaz worker` once its "
                    "lease expires")
        code = ExitCode.INTERRUPTED
    raise typer.Exit(int(code))


_log_context: LogContextListener | None = None


def tag_sagas_in_logs(on: bool) -> None:
    """With JSON logs, the sagas a command runs tag their records with saga and step (the
    listener is added to each configuration the command uses)."""
    global _log_context
    _log_context = LogContextListener() if on else None


class Storages:
    """The configurations a command used, so that their storages are closed at its end."""

    def __init__(self) -> None:
        self._configs: list[SagaConfig] = []
        self._checked: set[Path] = set()

    def config(self, saga: Saga | None = None) -> SagaConfig:
        """The configuration ``saga`` runs with (its own, else the global one)."""
        config = (saga.config if saga is not None else None) or get_config()
        if not any(config is known for known in self._configs):
            self._configs.append(config)
            if _log_context is not None and not any(
                    isinstance(listener, LogContextListener) for listener in config.listeners):
                config.listeners.append(_log_context)
            files = [path for storage in (config.write_storage, config.read_storage)
                     if isinstance(storage, HoldsPrivateFiles)
                     for path in storage.private_files()]
            warn_loose_modes(path for path in dict.fromkeys(files) if path not in self._checked)
            self._checked.update(files)
        return config

    async def close(self) -> None:
        seen: list[SagaStorage] = []
        for config in self._configs:
            for storage in (config.write_storage, config.read_storage):
                if any(storage is s for s in seen):
                    continue
                seen.append(storage)
                try:
                    await storage.close()
                except Exception:
                    # Closing is best effort: the command's outcome is already decided.
                    logger.warning("closing %r failed", storage, exc_info=True,
                                   extra={"action": "cli_storage_close_failed"})


def warn_loose_modes(paths: Iterable[Path]) -> None:
    """A one-line warning for each file of ``paths`` that other users may read."""
    for message in loose_mode_warnings(paths):
        print_warning(message)


def run_async(body: Callable[[Storages], Awaitable[int]]) -> int:
    """Run an async command body on a fresh event loop; close its storages whatever happens."""

    async def scoped() -> int:
        storages = Storages()
        try:
            return await body(storages)
        finally:
            await storages.close()

    return asyncio.run(scoped())


def fail(message: str, code: ExitCode = ExitCode.USAGE) -> NoReturn:
    raise CliError(message, code)
