"""`sagaz sagas check-versions | list --status STUCK | resume | cancel | retry`, as operators and
deploy pipelines run them (subprocesses), on the embedded SQLite file.

A saga becomes unfinished the honest way: its process kills itself (SIGKILL) inside a step.
"""

from __future__ import annotations

import getpass
import json
import signal
import uuid
from pathlib import Path

import pytest
from test_cli import assert_clean_error, cli, saga_json

SHOP_V1 = '''
import os, signal
from pathlib import Path
from sagaz import Saga, register

def note(ctx, line):
    with open(ctx["effects"], "a") as f:
        f.write(line + "\\n")

def step(name):
    async def act(ctx):
        note(ctx, "action " + name)
        if ctx.get("crash_in") == name:
            os.kill(os.getpid(), signal.SIGKILL)
        if ctx.get("fail_in") == name:
            raise RuntimeError(name + " fails")
    async def undo(ctx):
        if Path(ctx["effects"] + ".broken").exists():
            raise ConnectionError("cannot undo " + name)
        note(ctx, "compensate " + name)
    return name, act, undo

order = Saga(name="cli-order", version="1")
for name in ("reserve", "charge", "ship"):
    order.add_step(*step(name))
register(order)
'''
SHOP_V2 = SHOP_V1.replace('version="1"', 'version="2"').replace(
    '("reserve", "charge", "ship")', '("reserve", "charge_card", "notify")')
LEASE = {"SAGAZ_LEASE_SECONDS": "0.3"}


@pytest.fixture
def shop(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "shop_v1.py").write_text(SHOP_V1)
    (tmp_path / "shop_v2.py").write_text(SHOP_V2)
    return {"SAGAZ_STORAGE_URL": f"sqlite:///{tmp_path / 'sagas.db'}", **LEASE}


def run_order(tmp_path: Path, env: dict[str, str], **ctx: str) -> tuple[str, int]:
    saga_id = str(uuid.uuid4())
    context = json.dumps({"effects": str(tmp_path / f"{saga_id}.log"), **ctx})
    ran = cli(tmp_path, "run", "shop_v1:order", "--saga-id", saga_id, "--ctx", context, **env)
    return saga_id, ran.returncode


def effects(tmp_path: Path, saga_id: str) -> list[str]:
    return (tmp_path / f"{saga_id}.log").read_text().splitlines()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_check_versions_gates_a_deploy_and_resume_migrates_the_stuck_saga(
    tmp_path: Path, shop: dict[str, str]
) -> None:
    saga_id, code = run_order(tmp_path, shop, crash_in="charge")
    assert code == -signal.SIGKILL

    gate = cli(tmp_path, "sagas", "check-versions", "--import", "shop_v2", **shop)
    assert gate.returncode == 1, (gate.stdout, gate.stderr)
    assert saga_id in gate.stdout and "stuck" in gate.stdout
    as_json = cli(tmp_path, "sagas", "check-versions", "--import", "shop_v2", "--json", **shop)
    assert as_json.returncode == 1
    [row] = json.loads(as_json.stdout)
    assert (row["id"], row["stuck"], row["runs_with"]) == (saga_id, True, None)
    assert row["started_with"].startswith("cli-order v1 (")
    assert "removed steps charge, ship; added steps charge_card, notify" in row["why"]
    both = cli(tmp_path, "sagas", "check-versions", "-i", "shop_v1,shop_v2", **shop)
    assert both.returncode == 0, both.stdout
    assert "cli-order v1" in both.stdout and "same definition" in both.stdout

    listed = cli(tmp_path, "sagas", "list", "--status", "stuck", "--import", "shop_v2", **shop)
    assert listed.returncode == 0, listed.stderr
    assert saga_id in listed.stdout

    refused = cli(tmp_path, "sagas", "resume", saga_id, "--definition", "2", "--import",
                  "shop_v2", **shop)
    assert_clean_error(refused, 1, "charge may have been running", "--force")
    resumed = cli(tmp_path, "sagas", "resume", saga_id, "--definition", "2", "--import",
                  "shop_v2", "--force", "--actor", "ops", "--reason", "v1 retired", **shop)
    assert resumed.returncode == 0, (resumed.stdout, resumed.stderr)
    assert "COMPENSATED" in resumed.stdout
    # v2 compensates what the saga did that v2 knows (reserve); none of v2's new steps runs.
    assert effects(tmp_path, saga_id) == ["action reserve", "action charge",
                                          "compensate reserve"]
    shown = saga_json(tmp_path, saga_id, **shop)
    assert (shown["status"], shown["definition_version"]) == ("COMPENSATED", "2")
    [entry] = [e for e in shown["history"] if e["event"] == "resume_requested"]
    assert (entry["actor"], entry["reason"], entry["abandoned"]) == ("ops", "v1 retired",
                                                                     ["charge"])
    clean = cli(tmp_path, "sagas", "check-versions", "--import", "shop_v2", **shop)
    assert clean.returncode == 0 and "no unfinished sagas" in clean.stdout


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_cancel_and_retry_from_the_command_line(tmp_path: Path, shop: dict[str, str]) -> None:
    crashed, code = run_order(tmp_path, shop, crash_in="ship")
    assert code == -signal.SIGKILL
    cancelled = cli(tmp_path, "sagas", "cancel", crashed, "--reason", "customer asked",
                    "--actor", "ann", "--import", "shop_v1", **shop)
    assert cancelled.returncode == 0, (cancelled.stdout, cancelled.stderr)
    assert "the saga ended COMPENSATED" in cancelled.stdout
    assert effects(tmp_path, crashed)[-3:] == ["compensate ship", "compensate charge",
                                               "compensate reserve"]
    shown = saga_json(tmp_path, crashed, **shop)
    assert shown["error"] == "cancelled: customer asked (by ann)"
    assert shown["cancel_requested"]["actor"] == "ann"
    table = cli(tmp_path, "sagas", "show", crashed, **shop)
    assert "by ann: customer asked" in table.stdout

    failing = str(uuid.uuid4())
    (tmp_path / f"{failing}.log.broken").touch()
    ran = cli(tmp_path, "run", "shop_v1:order", "--saga-id", failing, "--ctx",
              json.dumps({"effects": str(tmp_path / f"{failing}.log"), "fail_in": "ship"}),
              **shop)
    assert ran.returncode == 1
    assert saga_json(tmp_path, failing, **shop)["status"] == "FAILED"
    (tmp_path / f"{failing}.log.broken").unlink()
    retried = cli(tmp_path, "sagas", "retry", failing, "--import", "shop_v1", **shop)
    assert retried.returncode == 0, (retried.stdout, retried.stderr)
    assert "the saga ended COMPENSATED" in retried.stdout
    assert effects(tmp_path, failing)[-2:] == ["compensate charge", "compensate reserve"]
    rows = saga_json(tmp_path, failing, **shop)["history"]
    history = [e["event"] for e in rows]
    assert history.index("retry_requested") < history.index("saga_compensated")
    [retry_row] = [e for e in rows if e["event"] == "retry_requested"]
    assert retry_row["actor"] == getpass.getuser(), "without --actor: the OS user"
    assert_clean_error(cli(tmp_path, "sagas", "cancel", failing, "--import", "shop_v1", **shop),
                       1, "it is COMPENSATED")
    assert_clean_error(cli(tmp_path, "sagas", "cancel", str(uuid.uuid4()), **shop), 1,
                       "sagaz sagas list")
    assert_clean_error(cli(tmp_path, "sagas", "list", "--status", "bogus", **shop), 2,
                       "unknown --status")
