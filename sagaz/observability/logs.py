"""Structured JSON logs: one JSON object per line, with the ``saga_id``, ``step`` and ``action``
keys (null when a record has none), for log pipelines that index fields instead of parsing text.

Records carry ``saga_id``/``step`` in two ways: sagaz's own log calls put them in ``extra``, and
:class:`LogContextListener` (an engine listener) remembers which saga and step the current task
runs, so an action's own ``logger.info(...)`` is tagged too, without passing anything.
``sagaz --log-format json`` installs both; an application can do the same::

    handler.setFormatter(JsonFormatter())
    SagaConfig(listeners=[LogContextListener()])
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from typing import Any

from sagaz.engine.listeners import SagaListener

__all__ = ["JsonFormatter", "LogContextListener"]

# (saga_id, step) of the saga step the current task runs. Each step of a parallel level runs in
# its own task, so each sees its own; a sequential saga sets and clears it in the caller's task.
_current: contextvars.ContextVar[tuple[str, str | None] | None] = contextvars.ContextVar(
    "sagaz_log_context", default=None)

# The attributes every LogRecord has: whatever else a record carries came from ``extra``.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class LogContextListener(SagaListener):
    """Tags log records with the saga and step that the task logging them runs."""

    def saga_started(self, saga_name: str, saga_id: str, context: dict[str, Any]) -> None:
        _current.set((saga_id, None))

    def step_started(self, saga_name: str, saga_id: str, step: str, attempt: int) -> None:
        _current.set((saga_id, step))

    def step_completed(self, saga_name: str, saga_id: str, step: str, duration: float) -> None:
        _current.set((saga_id, None))

    def step_failed(
        self, saga_name: str, saga_id: str, step: str, error: BaseException, final: bool
    ) -> None:
        _current.set((saga_id, None))

    def compensation_started(self, saga_name: str, saga_id: str, step: str) -> None:
        _current.set((saga_id, step))

    def compensation_completed(
        self, saga_name: str, saga_id: str, step: str, error: BaseException | None
    ) -> None:
        _current.set((saga_id, None))

    def saga_finished(self, saga_name: str, saga_id: str, status: str, duration: float) -> None:
        _current.set(None)

    def saga_interrupted(self, saga_name: str, saga_id: str, error: BaseException) -> None:
        _current.set(None)


def _plain(value: Any) -> Any:
    """A value json can write: extras are often ids, counts and lists of them; the rest is
    written as its str()."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC, ISO 8601, ms), ``level``, ``logger``,
    ``message``, ``saga_id``, ``step``, ``action``, every other ``extra`` key, and ``exc``
    (the traceback) when there is one. Newlines inside values are escaped, so a record is
    always exactly one line."""

    def format(self, record: logging.LogRecord) -> str:
        context = _current.get()
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "saga_id": context[0] if context else None,
            "step": context[1] if context else None,
            "action": None,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                entry[key] = _plain(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, separators=(",", ":"))
