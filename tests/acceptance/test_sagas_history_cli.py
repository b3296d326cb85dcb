"""`sagaz sagas show` tells a saga's history, as users run it (a subprocess), on the embedded
SQLite file and on a real PostgreSQL."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from pg_fixtures import as_url
from test_cli import cli

SAGA_MODULE = '''
from sagaz import RetryPolicy, Saga

async def reserve(ctx):
    return {"reserved": True}

async def unreserve(ctx):
    return None

async def charge(ctx):
    raise ConnectionError(
        f"bank unreachable at postgresql://shop:s3cret@bank/db (try {ctx.attempt})")

flaky = (Saga(name="cli-flaky", retry_policy=RetryPolicy(base_delay=0.001, max_delay=0.002))
         .add_step("reserve", reserve, unreserve)
         .add_step("charge", charge, max_retries=2))
'''
SHOWN_ERROR = "ConnectionError: bank unreachable at postgresql://shop:***@bank/db (try {})"


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "sqlite":
        return {"SAGAZ_STORAGE_URL": f"sqlite:///{tmp_path / 'sagas.db'}"}
    return {"SAGAZ_STORAGE_URL": as_url(request.getfixturevalue("pg_dsn"))}


def test_sagas_show_prints_the_history_of_a_retried_and_compensated_saga(
    tmp_path: Path, storage_env: dict[str, str]
) -> None:
    (tmp_path / "shop.py").write_text(SAGA_MODULE)
    saga_id = str(uuid.uuid4())
    ran = cli(tmp_path, "run", "shop:flaky", "--saga-id", saga_id, **storage_env)
    assert ran.returncode == 1, ran.stderr

    shown = cli(tmp_path, "sagas", "show", saga_id, **storage_env)
    assert shown.returncode == 0, shown.stderr
    history = shown.stdout[shown.stdout.index("history (oldest first)"):]
    assert "s3cret" not in history
    lines = [line for line in history.splitlines() if "_" in line and "│" in line]
    expected = [
        ("attempt_failed", "charge", "1"),
        ("attempt_failed", "charge", "2"), ("attempt_failed", "charge", "3"),
        ("step_failed", "charge", "3"), ("saga_compensating", "charge", "-"),
        ("step_compensated", "reserve", "1"), ("saga_compensated", "-", "-"),
    ]
    assert [tuple(cell.strip() for cell in line.split("│")[2:5]) for line in lines] == expected
    assert SHOWN_ERROR.format(1) in history and SHOWN_ERROR.format(3) in history

    as_json = cli(tmp_path, "sagas", "show", saga_id, "--json", **storage_env)
    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)["history"]
    assert "s3cret" not in json.dumps(rows)
    assert [(r["event"], r.get("step"), r.get("attempt")) for r in rows] == [
        (event, None if step == "-" else step, None if attempt == "-" else int(attempt))
        for event, step, attempt in expected]
    assert rows[0]["error_type"] == "ConnectionError"
    assert rows[0]["error"] == SHOWN_ERROR.format(1).removeprefix("ConnectionError: ")
    assert all(isinstance(r["at"], float) for r in rows)
