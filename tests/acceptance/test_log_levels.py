"""Every command of ``sagaz`` at every ``--log-level``: no log call may fail, and no ``extra`` key
may name a LogRecord attribute (logging raises KeyError for one, but only for records of an
enabled level: ``--log-level info`` once killed the worker's maintenance that way). Once more at
debug with ``--log-format json``: every record must format as JSON.

Commands run in-process (``sagaz.cli.main``) so a hook on ``Logger.makeRecord`` sees every record.
The commands that would start a local cluster or a long benchmark run only up to their argument
validation; the static check in tests/unit/test_log_extra_keys.py covers the rest of their log
calls."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer.main
from pg_fixtures import as_url

import sagaz
from sagaz.cli import main
from sagaz.cli.app import app

HERE = Path(__file__).resolve().parent  # sample_sagas.py
LEVELS = ("debug", "info", "warning", "error")
RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"

# Per command: its arguments and SAGAZ_* variables, given the test's PostgreSQL URL and
# directory. Exit codes other than 0 are expected where the invocation is meant to stop early.
Invocation = tuple[list[str], dict[str, str], set[int]]


def _invocations(pg: str, tmp: Path) -> dict[str, Invocation]:
    on_pg = {"SAGAZ_STORAGE_URL": pg}
    relay = {"SAGAZ_STORAGE_URL": pg, "SAGAZ_BROKER_URL": "memory://", "SAGAZ_DATABASE_URL": pg}
    nowhere = str(tmp / "no-cluster")
    return {
        "version": (["version"], {}, {0}),
        "demo": (["demo", "--pace", "0"], {}, {0}),
        "init": (["init", "--dir", str(tmp / "deploy"), "--force"], {}, {0}),
        "run": (["run", "sample_sagas:hello", "--ctx", '{"name": "x"}'], {}, {0}),
        "show": (["show", "sample_sagas:hello"], {}, {0}),
        "worker": (["worker", "--once", "--import", "sample_sagas"], relay, {0}),
        "sagas list": (["sagas", "list"], {}, {0}),
        "sagas show": (["sagas", "show", UNKNOWN_ID], {}, {1}),
        "sagas cancel": (["sagas", "cancel", UNKNOWN_ID, "--reason", "r"], {}, {1}),
        "sagas retry": (["sagas", "retry", UNKNOWN_ID], {}, {1}),
        "sagas resume": (["sagas", "resume", UNKNOWN_ID, "--definition", "1"], {}, {1}),
        "sagas check-versions": (["sagas", "check-versions", "--import", "sample_sagas"], {},
                                 {0}),
        "sagas signal": (["sagas", "signal", UNKNOWN_ID, "Go", "--payload", "{}"], {}, {1}),
        "db migrate": (["db", "migrate", "--dsn", pg], {}, {0}),
        "db maintain": (["db", "maintain", "--dsn", pg], {}, {0}),
        "db partitions": (["db", "partitions", "--dsn", pg], {}, {0}),
        "db cleanup-inbox": (["db", "cleanup-inbox", "--days", "90", "--dsn", pg], {}, {0}),
        # Runs until a signal: argument validation only (tests/acceptance/test_metrics_cli.py
        # and tests/ha/test_ha_metrics.py serve and scrape it).
        "metrics serve": (["metrics", "serve", "--cluster", nowhere], {}, {2}),
        "outbox status": (["outbox", "status"], on_pg, {0}),
        "outbox dlq list": (["outbox", "dlq", "list"], on_pg, {0}),
        "outbox dlq retry": (["outbox", "dlq", "retry"], on_pg, {0}),
        "outbox dlq purge": (["outbox", "dlq", "purge", "--yes"], on_pg, {0}),
        "benchmark engine": (["benchmark", "engine", "--sagas", "100", "--runs", "1"], {}, {0}),
        # Below their minimum size: argument validation only (a real run takes minutes).
        "benchmark postgres": (["benchmark", "postgres", "--sagas", "1"], {}, {2}),
        "benchmark partitioning": (["benchmark", "partitioning", "--rows", "1"], {}, {2}),
        "benchmark replication": (["benchmark", "replication", "--seconds", "0"], {}, {2}),
        "benchmark outbox": (["benchmark", "outbox", "--events", "1"], {}, {2}),
        "benchmark brokers": (["benchmark", "brokers", "--events", "1"], {}, {2}),
        "benchmark backup": (["benchmark", "backup", "--size-mb", "1"], {}, {2}),
        "benchmark report": (["benchmark", "report", "--broker", "kafka", "--out",
                              str(tmp / "report")], {}, {2}),
        "dev up": (["dev", "up", "--replicas", "999", "--dir", nowhere], {}, {2}),
        "dev env": (["dev", "env", "--dir", nowhere], {}, {1, 2}),
        "dev status": (["dev", "status", "--dir", nowhere], {}, {1, 2}),
        "dev down": (["dev", "down", "--dir", nowhere], {}, {0, 1, 2}),
        "dev restart": (["dev", "restart", "node0", "--dir", nowhere], {}, {1, 2}),
        "dev supervise": (["dev", "supervise", "--dir", nowhere], {}, {1, 2}),
        "dev rotate-secrets": (["dev", "rotate-secrets", "--dir", nowhere], {}, {2}),
        "dev restore": (["dev", "restore", "--to", "latest", "--dir", nowhere], {}, {2}),
        "ha promote": (["ha", "promote", "node1", "--dir", nowhere], {}, {1, 2}),
        "ha rejoin": (["ha", "rejoin", "node1", "--dir", nowhere], {}, {1, 2}),
        "ha switchover": (["ha", "switchover", "--dir", nowhere], {}, {2}),
        "ha failover": (["ha", "failover", "--to", "node1", "--dir", nowhere], {}, {2}),
        # No cluster there: they stop at finding none (a real backup runs in tests/ha).
        "backup run": (["backup", "run", "--dir", nowhere], {}, {1, 2}),
        "backup list": (["backup", "list", "--dir", nowhere], {}, {1, 2}),
        "backup check": (["backup", "check", "--dir", nowhere], {}, {1, 2}),
        "backup restore": (["backup", "restore", "--to", "latest", "--into",
                            str(tmp / "restored"), "--dir", nowhere], {}, {1, 2}),
        "backup stop-restored": (["backup", "stop-restored", str(tmp / "restored")], {},
                                 {0, 1, 2}),
        "backup verify": (["backup", "verify", "--dir", nowhere], {}, {1, 2}),
    }


def _commands() -> list[str]:
    """Every leaf command of the CLI, as "group sub"."""
    found: list[str] = []

    def walk(command: Any, path: list[str]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            found.append(" ".join(path))
            return
        for name, sub in subcommands.items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


@pytest.fixture
def collisions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The reserved ``extra`` keys of every record made meanwhile (logging would raise for
    them, and a caller that catches Exception could hide it)."""
    seen: list[str] = []
    make_record: Callable[..., logging.LogRecord] = logging.Logger.makeRecord

    def checking(self: logging.Logger, *args: Any, **kwargs: Any) -> logging.LogRecord:
        extra = kwargs.get("extra", args[8] if len(args) > 8 else None)
        seen.extend(f"{self.name}: {key!r}" for key in extra or () if key in RESERVED)
        return make_record(self, *args, **kwargs)

    monkeypatch.setattr(logging.Logger, "makeRecord", checking)
    return seen


def test_the_table_names_every_command(tmp_path: Path) -> None:
    assert sorted(_commands()) == sorted(_invocations("postgresql://x@h/db", tmp_path))


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("level", "log_format"),
                         [*((level, "text") for level in LEVELS), ("debug", "json")])
def test_every_command_at_every_log_level(
    level: str, log_format: str, pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], collisions: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(HERE))
    for name in [k for k in os.environ if k.startswith("SAGAZ_")]:
        monkeypatch.delenv(name)
    failures = []
    for command, (args, env, codes) in _invocations(as_url(pg_dsn), tmp_path).items():
        with monkeypatch.context() as scoped:
            for name, value in env.items():
                scoped.setenv(name, value)
            previous = sagaz.configure(None)  # the global config comes from this env
            try:
                code = main(["--log-level", level, "--log-format", log_format, *args])
            finally:
                sagaz.configure(previous)
        captured = capsys.readouterr()
        if code not in codes or "Traceback" in captured.err + captured.out:
            failures.append(f"{command}: exit {code}\n{captured.err[-1500:]}")
    assert not collisions, collisions
    assert not failures, "\n".join(failures)
