"""The JSON log formatter on its own: one line per record whatever the record holds, the fixed
keys always present, extras written, tracebacks kept; and the listener that tags records with
the saga and step the current task runs (each parallel step sees its own)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from sagaz import Saga, SagaConfig
from sagaz.observability.logs import JsonFormatter, LogContextListener
from sagaz.storage.memory import InMemorySagaStorage


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def collected() -> Any:
    handler = _Collect()
    logger = logging.getLogger("json-log-test")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield logger, handler.lines
    logger.removeHandler(handler)


def test_every_record_is_one_line_with_the_fixed_keys(collected: Any) -> None:
    logger, lines = collected
    logger.warning("two\nlines \x1b[31m", extra={"action": "a_b", "events": 3,
                                                  "path": Path("/x"), "ids": ("1", "2")})
    try:
        raise ValueError("bad")
    except ValueError:
        logger.exception("failed", extra={"action": "c_d"})
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "two\nlines \x1b[31m"
    assert (first["action"], first["events"], first["path"], first["ids"]) == (
        "a_b", 3, "/x", ["1", "2"])
    assert (first["saga_id"], first["step"], first["level"]) == (None, None, "WARNING")
    assert "ValueError: bad" in second["exc"] and second["action"] == "c_d"


async def test_parallel_steps_tag_their_records_with_their_own_step(collected: Any) -> None:
    logger, lines = collected

    async def work(ctx: Any) -> None:
        await asyncio.sleep(0.01)  # both steps are running at once
        logger.info("in %s", ctx.step)

    saga = Saga(name="json-log-parallel", config=SagaConfig(
        storage=InMemorySagaStorage(), listeners=[LogContextListener()]))
    saga.add_step("left", work, depends_on=[]).add_step("right", work, depends_on=[])
    result = await saga.execute({})
    logger.info("after")
    records = [json.loads(line) for line in lines]
    tagged = {r["message"]: (r["saga_id"], r["step"]) for r in records}
    assert tagged["in left"] == (result.saga_id, "left")
    assert tagged["in right"] == (result.saga_id, "right")
    assert tagged["after"] == (None, None)
