"""Every fenced code block of README.md runs, or is checked against the real thing, as printed.

How a block is treated depends on its language and on a marker, an HTML comment on the line just
before its fence (``<!-- readme-test: KIND -->``):

* ```python without a marker: a program, run in a fresh interpreter in an empty directory with
  no SAGAZ_* variable: it must exit 0.
* ```python with ``fragment=NAME``: a snippet that uses names the prose introduces (``storage``,
  ``conn``, ``BROKER_URL``...). FRAGMENTS[NAME] defines them on a real PostgreSQL database (and a
  real broker), runs the snippet as printed (top-level ``await`` allowed: it stands for code inside
  an async function), then checks what the snippet promises.
* ```sql with ``needs=postgres``: run on a freshly migrated database. ``pg-cron``: the commands
  it schedules are run (pg_cron itself is not installed on the test server).
* plain ``` blocks of commands: each ``sagaz ...`` line names existing commands and options,
  each ``make X`` an existing target. ``sql-functions``: each function exists in the schema.
* ```json with ``status-json``: the keys are exactly those `sagaz dev status --json` prints.
* ```bash: run with bash, unless listed in NOT_RUN with the reason.

A block that fits none of these fails the test, so a new block needs a marker or an entry here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import typer.main
from pg_fixtures import as_url

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

NOT_RUN = {
    "make demo   # creates .venv, installs sagaz, runs an order saga: one success, one "
    "compensated failure":
        "make test runs the whole suite, this test included, and both build a virtualenv: it is "
        "what CI runs (.ci/run); sagaz demo itself runs in tests/acceptance/test_cli.py",
    "cluster.json       base port, database, nodes, which node is the primary, binaries (no "
    "secrets)":
        "a directory listing, not code: tests/ha/test_dev_lifecycle.py and test_dev_cluster.py "
        "look at the files of a real cluster",
    "error: storage error: PostgreSQL at db:5432/app rejected the connection (connection "
    "failed: ...":
        "sample output of the CLI, not code: tests/acceptance/test_storage_errors_cli.py checks "
        "that message (one line, exit 3, no password) against a real server",
}
"""Blocks not executed, by their first line, with the reason."""


@dataclass(frozen=True)
class Block:
    line: int
    language: str
    marker: str
    text: str

    @property
    def first_line(self) -> str:
        return self.text.splitlines()[0] if self.text else ""

    def __str__(self) -> str:
        return f"README.md:{self.line} ```{self.language} {self.first_line[:40]!r}"


_FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                    re.MULTILINE | re.DOTALL)
_MARKER = re.compile(r"<!--\s*readme-test:\s*(?P<kind>[^>]*?)\s*-->\s*\Z")


def readme_blocks() -> list[Block]:
    text = README.read_text()
    blocks = []
    previous_end = 0
    for match in _FENCE.finditer(text):
        before = text[previous_end:match.start()]
        marker = _MARKER.search(before)
        indent = len(match["indent"])
        body = "\n".join(line[indent:] for line in match["body"].splitlines())
        blocks.append(Block(text.count("\n", 0, match.start()) + 1, match["lang"],
                            marker["kind"] if marker else "", body + "\n"))
        previous_end = match.end()
    return blocks


BLOCKS = readme_blocks()


def _kind(block: Block) -> str:
    if block.first_line in NOT_RUN:
        return "not-run"
    if block.language == "python":
        return block.marker or "program"
    if block.language == "sql" and block.marker in ("needs=postgres", "pg-cron"):
        return block.marker
    if block.language == "json" and block.marker == "status-json":
        return block.marker
    if block.language == "bash":
        return "bash"
    if block.language == "" and block.marker == "sql-functions":
        return block.marker
    if block.language == "" and all(_is_command(line) for line in _lines(block)):
        return "commands"
    raise AssertionError(
        f"{block}: the README test does not know how to run this block: mark it with "
        "<!-- readme-test: KIND --> or list it in NOT_RUN with a reason (tests/acceptance/"
        "test_readme.py)")


def _lines(block: Block) -> list[str]:
    return [line for line in block.text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _is_command(line: str) -> bool:
    return line.split()[0] in ("sagaz", "make", "eval")


def test_every_block_is_run_or_listed_with_a_reason() -> None:
    assert len(BLOCKS) > 15  # the parser found them
    kinds = {str(block): _kind(block) for block in BLOCKS}
    listed = {block.first_line for block in BLOCKS}
    assert set(NOT_RUN) <= listed, f"NOT_RUN names blocks the README lost: {set(NOT_RUN) - listed}"
    assert "program" in kinds.values() and "commands" in kinds.values()


def _ids(kind: str) -> list[Any]:
    chosen = [b for b in BLOCKS if _safe_kind(b) == kind]
    return [pytest.param(b, id=f"line{b.line}") for b in chosen]


def _safe_kind(block: Block) -> str:
    try:
        return _kind(block)
    except AssertionError:
        return "unknown"  # reported by test_every_block_is_run_or_listed_with_a_reason


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAZ_")}
    env.update(extra)
    return env


def _python(code: str, cwd: Path, timeout: float = 60, **env: str) -> None:
    script = cwd / "block.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], cwd=cwd, env=_clean_env(**env),
                            capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{code}\n--- stdout\n{result.stdout}\n--- stderr\n" \
        f"{result.stderr}"


# -- python programs ------------------------------------------------------------------------------


@pytest.mark.parametrize("block", _ids("program"))
def test_python_program_runs_as_printed(block: Block, tmp_path: Path) -> None:
    _python(block.text, tmp_path)


# -- python fragments on real services ------------------------------------------------------------

_RUNNER = '''\
import ast, asyncio, inspect, os, sys

async def main():
    ns = {"__name__": "__readme__"}
    for name, part in (("prelude", PRELUDE), ("README block", BLOCK), ("checks", CHECKS)):
        code = compile(part, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(code, ns)
        if inspect.iscoroutine(result):
            await asyncio.wait_for(result, 45)

asyncio.run(main())
'''

FRAGMENTS: dict[str, tuple[str, str]] = {
    # RW_URL, RO_URL: the test database (one server stands for primary and replica); saga, ctx.
    "replica-reads": ('''
import os
from sagaz import Saga, SagaConfig, configure
from sagaz.storage.postgresql import PostgreSQLSagaStorage
RW_URL = RO_URL = os.environ["README_PG_URL"]
saga = Saga(name="readme-replica-reads").add_step("a", lambda ctx: {"a": 1})
ctx = {"order_id": "A1"}
''', '''
assert state is not None and state.saga_id == result.saga_id, state
await read.close(); await write.close()
'''),
    # storage, conn (a psycopg AsyncConnection to the same database, with a table orders).
    "publish-in-transaction": ('''
import os, psycopg
from sagaz.storage.postgresql import PostgreSQLSagaStorage
storage = PostgreSQLSagaStorage(os.environ["README_PG_URL"])
conn = await psycopg.AsyncConnection.connect(os.environ["README_PG_URL"], autocommit=True)
await conn.execute("CREATE TABLE orders (id text)")
''', '''
row = await (await conn.execute(
    "SELECT count(*) FROM saga_outbox WHERE event_type = 'OrderPlaced'")).fetchone()
assert row == (1,), row
assert await (await conn.execute("SELECT id FROM orders")).fetchall() == [("A1",)]
await conn.close(); await storage.close()
'''),
    # storage, DIRECT_URL; one event waits in the outbox. A task stands for the application's
    # shutdown: it sets the block's `stop` once that event was acknowledged by NATS.
    "relay-in-code": ('''
import asyncio, os, psycopg
from sagaz.outbox import OutboxEvent
from sagaz.storage.postgresql import PostgreSQLSagaStorage
from sagaz.storage.postgresql.outbox import PostgreSQLOutbox
storage = PostgreSQLSagaStorage(os.environ["README_PG_URL"])
DIRECT_URL = os.environ["README_PG_URL"]
await PostgreSQLOutbox(storage).publish(OutboxEvent("ReadmeRelayed", {"n": 1}))

async def stop_when_sent():
    async with await psycopg.AsyncConnection.connect(DIRECT_URL, autocommit=True) as c:
        while True:
            row = await (await c.execute(
                "SELECT status FROM saga_outbox WHERE event_type = 'ReadmeRelayed'")).fetchone()
            if row and row[0] == "SENT" and "stop" in globals():
                globals()["stop"].set()
                return
            await asyncio.sleep(0.1)

stopper = asyncio.get_running_loop().create_task(stop_when_sent())
''', '''
assert stopper.done() and stopper.exception() is None
await storage.close()
'''),
    # storage, BROKER_URL (Redis, a database of its own) and a table stock; a task publishes an
    # event for the consumer and sets `stop` once the handler's write committed.
    "consume": ('''
import asyncio, os, psycopg
from sagaz.outbox import OutboxEvent, broker_from_url as _broker
from sagaz.storage.postgresql import PostgreSQLSagaStorage
storage = PostgreSQLSagaStorage(os.environ["README_PG_URL"])
BROKER_URL = os.environ["README_REDIS_URL"]
_url = os.environ["README_PG_URL"]
async with await psycopg.AsyncConnection.connect(_url, autocommit=True) as c:
    await c.execute("CREATE TABLE stock (sku text PRIMARY KEY, reserved int NOT NULL)")
    await c.execute("INSERT INTO stock VALUES ('X1', 0)")

# Before the block subscribes: a leftover group of an earlier run would already be past the
# event (destroying it while the block reads would leave the block waiting for nothing).
await _broker(BROKER_URL).destroy(["stock-service"])

async def publish_then_stop():
    producer = _broker(BROKER_URL)
    await producer.publish_batch([OutboxEvent("StockReserved", {"sku": "X1", "qty": 2})])
    async with await psycopg.AsyncConnection.connect(_url, autocommit=True) as c:
        while (await (await c.execute("SELECT reserved FROM stock")).fetchone()) != (2,) \\
                or "stop" not in globals():
            await asyncio.sleep(0.1)
    globals()["stop"].set()
    await producer.close()

helper = asyncio.get_running_loop().create_task(publish_then_stop())
''', '''
assert helper.done() and helper.exception() is None
assert inbox.processed == 1, inbox.processed
await _broker(BROKER_URL).destroy(["stock-service"])
await storage.close()
'''),
}


@pytest.mark.parametrize("block", [
    pytest.param(b, id=f"line{b.line}-{b.marker.split('=')[1]}")
    for b in BLOCKS if _safe_kind(b).startswith("fragment=")])
def test_python_fragment_runs_in_its_context(block: Block, tmp_path: Path, pg_dsn: str) -> None:
    name = block.marker.split("=", 1)[1]
    assert name in FRAGMENTS, f"{block}: no FRAGMENTS[{name!r}] in tests/acceptance/test_readme.py"
    prelude, checks = FRAGMENTS[name]
    code = (f"PRELUDE = {prelude!r}\nBLOCK = {block.text!r}\nCHECKS = {checks!r}\n" + _RUNNER)
    redis = os.environ.get("SAGAZ_TEST_REDIS", "127.0.0.1:6379")
    _python(code, tmp_path, timeout=100, README_PG_URL=as_url(pg_dsn),
            README_REDIS_URL=f"redis://{redis}/14")


# -- SQL ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", _ids("needs=postgres"))
def test_sql_runs_on_a_migrated_database(block: Block, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(block.text)


@pytest.mark.parametrize("block", _ids("pg-cron"))
def test_what_pg_cron_is_told_to_run_runs(block: Block, pg_dsn: str) -> None:
    commands = re.findall(r"cron\.schedule\('[^']*',\s*'[^']*',\s*'((?:[^']|'')*)'\)",
                          block.text)
    assert len(commands) == block.text.count("cron.schedule"), block.text
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for command in commands:
            conn.execute(command.replace("''", "'"))


@pytest.mark.parametrize("block", _ids("sql-functions"))
def test_the_listed_sql_functions_exist(block: Block, pg_dsn: str) -> None:
    names = re.findall(r"^(\w+)\(", block.text, re.MULTILINE)
    assert names, block.text
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        found = {r[0] for r in conn.execute(
            "SELECT proname FROM pg_proc WHERE proname = ANY(%s)", (names,)).fetchall()}
    assert set(names) == found, set(names) - found


# -- commands -------------------------------------------------------------------------------------


def _cli() -> Any:
    """The command tree (typer's click commands; a group has ``commands``)."""
    from sagaz.cli import app

    return typer.main.get_command(app)


def _is_group(command: Any) -> bool:
    return hasattr(command, "commands")


def _options(command: Any) -> set[str]:
    found = {"--help", "-h"}
    for param in command.params:
        found.update(param.opts)
        found.update(param.secondary_opts)
    return found


def _check_sagaz_line(words: list[str], block: Block) -> None:
    """``sagaz GROUP CMD|CMD ... [--opt]``: the commands exist, and so do the options shown."""
    commands: list[Any] = [_cli()]
    rest = words
    while rest and all(_is_group(c) for c in commands):
        names = rest[0].split("|")
        subs = [c.commands.get(n) for c in commands for n in names]
        if not all(subs):
            break
        commands = [s for s in subs if s is not None]
        rest = rest[1:]
    for command in commands:
        assert not _is_group(command), f"{block}: `sagaz {' '.join(words)}` " \
            f"names the group {command.name!r}, not a command"
    for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", " ".join(rest)):
        for command in commands:
            assert option in _options(command), \
                f"{block}: `sagaz {command.name}` has no option {option}"


@pytest.mark.parametrize("block", _ids("commands"))
def test_documented_commands_and_options_exist(block: Block) -> None:
    makefile = (ROOT / "Makefile").read_text()
    for line in _lines(block):
        code = line.split("  #")[0]
        if code.startswith("eval "):
            inner = re.search(r"\$\((sagaz [^)]*)\)", code)
            assert inner, f"{block}: {line}"
            code = inner[1]
        words = code.split()
        if words[0] == "make":
            assert re.search(rf"^{re.escape(words[1])}:", makefile, re.MULTILINE), \
                f"{block}: no make target {words[1]}"
            continue
        _check_sagaz_line(words[1:], block)


# -- JSON -----------------------------------------------------------------------------------------


def _field_names(cls: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("block", _ids("status-json"))
def test_status_json_example_has_the_keys_status_prints(block: Block) -> None:
    from sagaz.ha import health

    doc = json.loads(block.text)
    assert set(doc) == _field_names(health.ClusterHealth) | {"healthy", "monitoring"}
    # As tests/ha/test_monitoring_stack.py sees `dev status --json` print it.
    assert set(doc["monitoring"]) == {"enabled", "prometheus_url", "stopped"}
    assert set(doc["nodes"][0]) == _field_names(health.NodeHealth)
    assert set(doc["replication"][0]) == _field_names(health.ReplicationStat)
    assert set(doc["slots"][0]) == _field_names(health.SlotStat)
    for pool in doc["pools"].values():
        assert set(pool) == _field_names(health.PoolHealth)


# -- bash -----------------------------------------------------------------------------------------


def test_bash_blocks_run(tmp_path: Path) -> None:
    # Not parametrized: with every bash block in NOT_RUN, an empty parameter set would be
    # reported as a skip.
    for block in (b for b in BLOCKS if _safe_kind(b) == "bash"):
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", block.text], cwd=tmp_path,
                                env=_clean_env(), capture_output=True, text=True, timeout=120,
                                check=False)
        assert result.returncode == 0, f"{block}: {result.stderr}"
