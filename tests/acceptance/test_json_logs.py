"""``--log-format json`` / ``SAGAZ_LOG_FORMAT=json``: every stderr line is one JSON object, and
the records of a saga carry its ``saga_id`` and ``step`` (sagaz's own records and the actions'
records alike) with a stable ``action``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from test_cli import cli


def _records(stderr: str) -> list[dict[str, Any]]:
    """The log records: every line up to the command's own report (text on stderr, after the
    saga ended) parses on its own as one JSON object."""
    lines = stderr.splitlines()
    report = next((i for i, line in enumerate(lines) if line.startswith("saga ")), len(lines))
    assert report > 0, "no log line at all"
    assert not any(line.startswith("{") for line in lines[report:]), stderr
    return [json.loads(line) for line in lines[:report]]


def test_json_logs_carry_saga_id_step_and_action(tmp_path: Path) -> None:
    result = cli(tmp_path, "--log-format", "json", "--log-level", "info", "run",
                 "sample_sagas:logged", "--ctx", '{"order": "A1"}',
                 "--saga-id", "6f1c2b4e-0000-4000-8000-000000000001")
    assert result.returncode == 1, result.stderr
    records = _records(result.stderr)
    for record in records:
        assert {"ts", "level", "logger", "message", "saga_id", "step", "action"} <= set(record)
        assert record["ts"].endswith("Z")
    by_action = {r["action"]: r for r in records}
    mine = by_action["sample_reserve"]
    assert (mine["saga_id"], mine["step"], mine["logger"], mine["level"]) == (
        "6f1c2b4e-0000-4000-8000-000000000001", "reserve", "sample_sagas", "WARNING")
    assert mine["message"] == "reserving stock for A1"
    failed = by_action["compensation_failed"]
    assert (failed["saga_id"], failed["step"]) == ("6f1c2b4e-0000-4000-8000-000000000001",
                                                   "reserve")
    assert "stock service down" in failed["message"]


def test_the_environment_variable_selects_json_too(tmp_path: Path) -> None:
    result = cli(tmp_path, "--log-level", "warning", "run", "sample_sagas:logged",
                 SAGAZ_LOG_FORMAT="json")
    assert result.returncode == 1
    records = _records(result.stderr)
    assert any(r["action"] == "sample_reserve" and r["step"] == "reserve" for r in records)


def test_an_unknown_log_format_is_a_usage_error(tmp_path: Path) -> None:
    result = cli(tmp_path, "--log-format", "xml", "version")
    assert result.returncode == 2
    assert "xml" in result.stderr and "json" in result.stderr
