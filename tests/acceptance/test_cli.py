"""The `sagaz` command as users run it: a real subprocess (`python -m sagaz`) in a fresh directory,
so the embedded SQLite database `sagaz.db` lands in that directory; plus a few in-process calls of
`sagaz.cli.main`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from process_output import stdout_lines

import sagaz
from sagaz.cli import main

HERE = Path(__file__).resolve().parent  # holds sample_sagas.py


def _env(**extra: str) -> dict[str, str]:
    # Only the SAGAZ_* variables a test sets: the developer's own must not leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAZ_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def sagaz_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "sagaz", *args]


def cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(sagaz_cmd(*args), cwd=cwd, env=_env(**env), capture_output=True,
                          text=True, timeout=60, check=False)


def assert_clean_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in result.stderr, result.stderr


def saga_json(cwd: Path, saga_id: str, **env: str) -> dict[str, Any]:
    result = cli(cwd, "sagas", "show", saga_id, "--json", **env)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


# -- help, version, demo --------------------------------------------------------------------------


def test_help_describes_sagaz_every_command_and_the_exit_codes(tmp_path: Path) -> None:
    result = cli(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    assert "compensation" in result.stdout
    for command in ("version", "demo", "run", "show", "worker", "sagas"):
        assert f" {command} " in result.stdout, command
    assert "Exit codes" in result.stdout
    assert "SAGAZ_LOG_LEVEL" in result.stdout


def test_version(tmp_path: Path) -> None:
    result = cli(tmp_path, "version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"sagaz {sagaz.__version__}"


def test_demo_runs_one_saga_through_and_compensates_the_forced_failure(tmp_path: Path) -> None:
    result = cli(tmp_path, "demo", "--pace", "0")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "COMPLETED" in out
    assert "step charge failed" in out
    assert "compensated step reserve" in out
    assert "COMPENSATED" in out
    assert (tmp_path / "sagaz.db").exists()
    listed = json.loads(cli(tmp_path, "sagas", "list", "--json").stdout)
    assert sorted(s["status"] for s in listed) == ["COMPENSATED", "COMPLETED"]


def test_demo_options_and_storage_come_from_the_environment(tmp_path: Path) -> None:
    result = cli(tmp_path, "demo", SAGAZ_DEMO_FAIL_AT="ship", SAGAZ_DEMO_PACE="0",
                 SAGAZ_STORAGE_URL="sqlite:///state/demo.db")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "state" / "demo.db").exists()
    assert not (tmp_path / "sagaz.db").exists()
    assert "step ship failed" in result.stdout
    assert "compensated step charge" in result.stdout
    assert "compensated step reserve" in result.stdout


# -- run and show ---------------------------------------------------------------------------------


def test_run_prints_the_final_context_as_json(tmp_path: Path) -> None:
    result = cli(tmp_path, "run", "sample_sagas:hello", "--ctx", '{"name": "ada"}')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"name": "ada", "greeting": "hello ada", "count": 1}


def test_run_reads_a_10_mb_context_from_a_file_or_stdin(tmp_path: Path) -> None:
    # Too large for an argument list (the kernel caps one argument at 128 kB): the
    # "Argument list too long" users hit with an inline --ctx.
    blob = "x" * 10_000_000
    (tmp_path / "ctx.json").write_text(json.dumps({"name": "ada", "blob": blob}))
    from_file = cli(tmp_path, "run", "sample_sagas:hello", "--ctx", "@ctx.json")
    assert from_file.returncode == 0, from_file.stderr[-2000:]
    final = json.loads(from_file.stdout)
    assert final["greeting"] == "hello ada" and final["blob"] == blob
    from_stdin = subprocess.run(
        sagaz_cmd("run", "sample_sagas:hello", "--ctx", "-"), cwd=tmp_path, env=_env(),
        input=json.dumps({"name": "bo", "blob": blob}), capture_output=True, text=True,
        timeout=60, check=False)
    assert from_stdin.returncode == 0, from_stdin.stderr[-2000:]
    assert json.loads(from_stdin.stdout)["greeting"] == "hello bo"


def test_a_context_file_that_cannot_be_read_or_parsed_is_one_line_and_exit_2(
    tmp_path: Path,
) -> None:
    (tmp_path / "bad.json").write_text("{oops")
    (tmp_path / "list.json").write_text("[1]")
    for value, needle in [("@missing.json", "cannot read 'missing.json'"),
                          ("@", "needs a file name"),
                          ("@bad.json", "--ctx @bad.json is not valid JSON"),
                          ("@list.json", "--ctx @list.json must be a JSON object")]:
        result = cli(tmp_path, "run", "sample_sagas:hello", "--ctx", value)
        assert_clean_error(result, 2, "error:", needle)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_run_builds_a_saga_subclass_and_reads_the_context_from_the_environment(
    tmp_path: Path,
) -> None:
    result = cli(tmp_path, "run", "sample_sagas:ClassSaga", SAGAZ_RUN_CTX='{"n": 1}')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"n": 1, "first": True, "second": True}


def test_run_of_a_failing_saga_exits_1_and_says_why(tmp_path: Path) -> None:
    result = cli(tmp_path, "run", "sample_sagas:failing")
    assert_clean_error(result, 1, "COMPENSATED", "charge", "card declined")
    assert result.stdout == ""


def test_idempotency_key_runs_the_saga_once(tmp_path: Path) -> None:
    first = cli(tmp_path, "run", "sample_sagas:hello", "--idempotency-key", "order-7")
    second = cli(tmp_path, "run", "sample_sagas:hello", "--idempotency-key", "order-7",
                 "--ctx", '{"name": "other"}')
    assert first.returncode == second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == json.loads(first.stdout)
    assert len(json.loads(cli(tmp_path, "sagas", "list", "--json").stdout)) == 1


def test_bad_spec_bad_json_and_non_saga_are_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    for args, needle in [
        (["run", "sample_sagas"], "MODULE:ATTRIBUTE"),
        (["run", "sample_sagas:hello", "--ctx", "{oops"], "--ctx is not valid JSON"),
        (["run", "sample_sagas:not_a_saga"], "is a dict, not a saga"),
    ]:
        result = cli(tmp_path, *args)
        assert_clean_error(result, 2, "error:", needle)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(("args", "env", "needle"), [
    (["sagas", "list"], {"SAGAZ_STORAGE_URL": "postgresql://u:secret@[::1/db"},
     "SAGAZ_STORAGE_URL='postgresql://***' is malformed"),
    (["sagas", "list"], {"SAGAZ_ANALYTICS_URL": "postgresql://u:secret@db]/x"},
     "SAGAZ_ANALYTICS_URL='postgresql://***' is malformed"),
    (["worker", "--once"], {"SAGAZ_BROKER_URL": "amqp://u:secret@[rabbit"},
     "broker URL 'amqp://***' is malformed"),
    (["db", "migrate", "--dsn", "postgresql://u:secret@[::1/db"], {},
     "the PostgreSQL DSN is malformed"),
    (["benchmark", "partitioning", "--dsn", "postgresql://u:secret@[::1/db"], {},
     "--dsn (SAGAZ_BENCH_PG_DSN) is malformed"),
])
def test_a_url_with_an_unbalanced_bracket_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], needle: str,
) -> None:
    result = cli(tmp_path, *args, **env)
    assert_clean_error(result, 2, "error:", needle)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "secret" not in result.stderr


@pytest.mark.parametrize("args", [
    ["sagas", "list", "--limit", "99999999999999999999"],
    ["sagas", "list", "--offset", "99999999999999999999"],
    ["outbox", "dlq", "list", "--limit", "99999999999999999999"],
])
def test_a_number_beyond_what_the_database_takes_is_a_usage_error(
    tmp_path: Path, args: list[str],
) -> None:
    result = cli(tmp_path, *args)
    assert_clean_error(result, 2, args[-2], "less than or equal to")


def test_malformed_storage_url_names_the_variable_and_exits_2(tmp_path: Path) -> None:
    result = cli(tmp_path, "sagas", "list", SAGAZ_STORAGE_URL="mysql://db/sagas")
    assert_clean_error(result, 2, "SAGAZ_STORAGE_URL", "sqlite:///")


def test_show_prints_a_mermaid_flowchart(tmp_path: Path) -> None:
    result = cli(tmp_path, "show", "sample_sagas:hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("flowchart")
    assert "greet" in result.stdout
    assert "undo greet" in result.stdout


# -- sagas list / show ----------------------------------------------------------------------------


def test_sagas_list_shows_a_saga_that_ran(tmp_path: Path) -> None:
    saga_id = str(uuid.uuid4())
    assert cli(tmp_path, "run", "sample_sagas:hello", "--saga-id", saga_id).returncode == 0
    assert cli(tmp_path, "run", "sample_sagas:failing").returncode == 1

    table = cli(tmp_path, "sagas", "list")
    assert table.returncode == 0, table.stderr
    assert saga_id in table.stdout
    assert "cli-hello" in table.stdout
    assert "cli-failing" in table.stdout

    completed = cli(tmp_path, "sagas", "list", "--status", "completed", "--json")
    assert [s["id"] for s in json.loads(completed.stdout)] == [saga_id]
    limited = cli(tmp_path, "sagas", "list", "--json", SAGAZ_SAGAS_LIMIT="1")
    assert len(json.loads(limited.stdout)) == 1


def test_sagas_list_with_an_unknown_status_lists_the_valid_ones(tmp_path: Path) -> None:
    result = cli(tmp_path, "sagas", "list", "--status", "bogus")
    assert_clean_error(result, 2, "bogus")
    for status in sagaz.SagaStatus:
        assert status.value.lower() in result.stderr.lower()


def test_sagas_show_gives_the_steps_and_their_errors(tmp_path: Path) -> None:
    saga_id = str(uuid.uuid4())
    assert cli(tmp_path, "run", "sample_sagas:failing", "--saga-id", saga_id).returncode == 1
    result = cli(tmp_path, "sagas", "show", saga_id)
    assert result.returncode == 0, result.stderr
    for needle in (saga_id, "cli-failing", "COMPENSATED", "reserve", "charge", "card declined"):
        assert needle in result.stdout, needle

    data = saga_json(tmp_path, saga_id)
    assert data["status"] == "COMPENSATED"
    assert data["failed_step"] == "charge"
    steps = {s["name"]: s["status"] for s in data["steps"]}
    assert steps["reserve"] == "COMPENSATED"


def test_sagas_show_of_an_unknown_id_exits_1(tmp_path: Path) -> None:
    result = cli(tmp_path, "sagas", "show", str(uuid.uuid4()))
    assert_clean_error(result, 1, "no saga with id", "sagaz sagas list")


# -- worker ---------------------------------------------------------------------------------------


def _wait_until(condition: Any, proc: subprocess.Popen[str], what: str, limit: float = 20) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"process exited ({proc.returncode}) before {what}: "
                        f"{proc.communicate()}")
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.02)


def test_worker_once_compensates_a_saga_whose_executor_was_killed(tmp_path: Path) -> None:
    saga_id = str(uuid.uuid4())
    marker = tmp_path / "second-step-started"
    lease = {"SAGAZ_LEASE_SECONDS": "1"}
    proc = subprocess.Popen(
        sagaz_cmd("run", "sample_sagas:BlockingSaga", "--saga-id", saga_id,
                  "--ctx", json.dumps({"marker": str(marker)})),
        cwd=tmp_path, env=_env(**lease), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        _wait_until(marker.exists, proc, "the second step started")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    before = saga_json(tmp_path, saga_id)
    assert before["status"] == "RUNNING"
    assert {s["name"]: s["status"] for s in before["steps"]} == {"first": "COMPLETED"}

    # The killed executor's lease runs out one lease period after its last renewal; a pass that
    # comes too early finds nothing to claim, so try again a few times.
    time.sleep(1.5)
    for _ in range(20):
        # The variable form of --import, with a second module, like a deployment would set it.
        worker = cli(tmp_path, "worker", "--once",
                     SAGAZ_WORKER_IMPORTS="sample_sagas, sagaz.cli.demo", **lease)
        assert worker.returncode == 0, worker.stderr
        if "recovered 1 saga" in worker.stdout:
            break
        time.sleep(0.25)
    assert saga_id in worker.stdout
    after = saga_json(tmp_path, saga_id)
    assert after["status"] == "COMPENSATED"
    assert {s["name"]: s["status"] for s in after["steps"]} == {
        "first": "COMPENSATED", "second": "COMPENSATED"}
    # Both compensations ran: the interrupted step counts as "may have happened".
    assert Path(f"{marker}.undo-first").exists()
    assert Path(f"{marker}.undo-second").exists()


def test_worker_warns_about_sagas_it_has_no_definition_for(tmp_path: Path) -> None:
    saga_id = str(uuid.uuid4())
    marker = tmp_path / "started"
    proc = subprocess.Popen(
        sagaz_cmd("run", "sample_sagas:BlockingSaga", "--saga-id", saga_id,
                  "--ctx", json.dumps({"marker": str(marker)})),
        cwd=tmp_path, env=_env(SAGAZ_LEASE_SECONDS="0.5"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        _wait_until(marker.exists, proc, "the second step started")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    time.sleep(1.0)
    for _ in range(20):
        # Without --import the definition is unknown: the pass reports it and exits 1.
        worker = cli(tmp_path, "worker", "--once", SAGAZ_LEASE_SECONDS="0.5")
        if worker.returncode != 0:
            break
        time.sleep(0.25)
    assert_clean_error(worker, 1, saga_id, "cli-blocking", "--import")
    assert saga_json(tmp_path, saga_id)["status"] == "RUNNING"


def test_worker_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        sagaz_cmd("worker", "--import", "sample_sagas"), cwd=tmp_path,
        env=_env(SAGAZ_WORKER_INTERVAL="0.05"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    lines = stdout_lines(proc)
    try:
        first = lines.get(timeout=20)
        assert "worker started" in first
        assert "every 0.05s" in first
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert "Traceback" not in err


# -- in process -----------------------------------------------------------------------------------


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """cwd = tmp_path, no SAGAZ_* variables, and a global config rebuilt from that."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(HERE))
    for name in [k for k in os.environ if k.startswith("SAGAZ_")]:
        monkeypatch.delenv(name)
    previous = sagaz.configure(None)
    yield tmp_path
    sagaz.configure(previous)


def test_main_returns_exit_codes_in_process(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"sagaz {sagaz.__version__}"

    assert main(["run", "sample_sagas:hello", "--ctx", '{"name": "bo"}']) == 0
    assert json.loads(capsys.readouterr().out)["greeting"] == "hello bo"
    assert (in_tmp / "sagaz.db").exists()

    assert main(["run", "sample_sagas:failing"]) == 1
    assert "card declined" in capsys.readouterr().err

    assert main(["sagas", "show", "no-such-id"]) == 1
    assert main(["run", "sample_sagas:hello", "--ctx", "nope"]) == 2
    assert main(["sagas", "list", "--status", "bogus"]) == 2
    assert main(["no-such-command"]) == 2


def test_main_leaves_the_callers_logging_alone(in_tmp: Path) -> None:
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    assert main(["--log-level", "debug", "show", "sample_sagas:hello"]) == 0
    assert root.handlers == handlers
    assert root.level == level


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["run", "sample_sagas"], ["MODULE:ATTRIBUTE"]),
        (["run", "sample_sagas:"], ["MODULE:ATTRIBUTE"]),
        (["run", "sample_sagas/x.py:saga"], ["not a Python name"]),
        (["run", "no_such_module_xyz:saga"], ["cannot import module 'no_such_module_xyz'",
                                              "PYTHONPATH"]),
        (["run", "sample_sagas:missing"], ["no attribute 'missing'", "hello"]),
        (["run", "sample_sagas:not_a_saga"], ["is a dict, not a saga"]),
        (["run", "sagaz:Saga"], ["a saga needs a name"]),
        (["run", "sample_sagas:hello", "--ctx", "{oops"], ["--ctx is not valid JSON"]),
        (["run", "sample_sagas:hello", "--ctx", "[1, 2]"], ["--ctx must be a JSON object"]),
        (["run", "sample_sagas:hello", "--saga-id", "not-a-uuid"], ["saga_id must be a UUID"]),
        (["show", "sample_sagas:not_a_saga"], ["not a saga"]),
        (["worker", "--once", "--import", "no_such_module_xyz"], ["cannot import module"]),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], args: list[str], needles: list[str]
) -> None:
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    assert captured.err.startswith("error:")
    for needle in needles:
        assert needle in captured.err
