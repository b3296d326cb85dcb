"""Messages from servers, brokers and user data reach the terminal with their control characters
escaped: an error text can neither recolour nor rewrite what `sagaz` prints (ANSI sequences,
carriage returns, C1 controls, bidirectional overrides), while multi-line messages keep their
newlines."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import psycopg
from pg_fixtures import as_url
from test_db_cli import cli

from sagaz.cli.output import printable

# Red text, a carriage return that would overwrite the line, a C1 CSI (one-byte ESC [), BEL and
# a right-to-left override.
HOSTILE = "\x1b[31mred\x1b[0m\rforged\x9b2J\x07\u202eevil"
SHOWN = "\\x1b[31mred\\x1b[0m\\rforged\\x9b2J\\x07\\u202eevil"
CONTROLS = ("\x1b", "\r", "\x9b", "\x07", "\u202e")


def test_printable_escapes_controls_and_keeps_tabs_and_chosen_newlines() -> None:
    assert printable(HOSTILE) == SHOWN
    assert printable("a\tb\nc") == "a\tb\\nc"
    assert printable("line 1\nline 2\r\n", multiline=True) == "line 1\nline 2\\r\n"
    assert printable("plain text, ünïcode, 日本") == "plain text, ünïcode, 日本"


def test_a_postgresql_error_with_escape_sequences_is_printed_escaped(
        tmp_path: Path, pg_dsn: str) -> None:
    # A real server error: the function `sagaz db partitions` calls raises, from PL/pgSQL, a
    # message full of terminal controls.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION get_partition_statistics(exact boolean DEFAULT false) "
            "RETURNS TABLE (table_name text, partition_name text, range_start timestamptz, "
            "range_end timestamptz, row_count bigint, total_bytes bigint) "
            "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '%', "
            "E'\\x1b[31mred\\x1b[0m\\rforged\\u009b2J\\x07\\u202eevil'; END $$")
    result = cli(tmp_path, "db", "partitions", SAGAZ_DATABASE_URL=as_url(pg_dsn))
    assert result.returncode == 3, (result.stdout, result.stderr)
    # (the storage layer puts driver messages on one line: the CR became a space)
    assert "\\x1b[31mred\\x1b[0m forged\\x9b2J\\x07\\u202eevil" in result.stderr, result.stderr
    assert not any(c in result.stderr + result.stdout for c in CONTROLS), repr(result.stderr)
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_a_step_error_with_escape_sequences_is_escaped_in_run_list_and_show(
        tmp_path: Path) -> None:
    (tmp_path / "hostile.py").write_text(textwrap.dedent(f"""
        from sagaz import Saga

        async def explode(ctx):
            raise RuntimeError({HOSTILE!r} + "\\nsecond line")

        saga = Saga(name="hostile{chr(0x1b)}[2J").add_step("explode", explode)
    """))
    env = {"PYTHONPATH": str(tmp_path)}
    run = cli(tmp_path, "run", "hostile:saga", **env)
    assert run.returncode == 1, (run.stdout, run.stderr)
    listed = cli(tmp_path, "sagas", "list", **env)
    assert listed.returncode == 0, listed.stderr
    saga_id = json.loads(cli(tmp_path, "sagas", "list", "--json", **env).stdout)[0]["id"]
    shown = cli(tmp_path, "sagas", "show", saga_id, **env)
    assert shown.returncode == 0, shown.stderr
    for result in (run, listed, shown):
        text = result.stdout + result.stderr
        assert not any(c in text for c in CONTROLS), repr(text)
    assert SHOWN in run.stdout + run.stderr and SHOWN in shown.stdout
    assert "hostile\\x1b[2J" in listed.stdout
    # The error is multi-line by design: its newline stays a newline.
    assert "second line" in shown.stdout and "\\nsecond line" not in shown.stdout
    # --json is for programs: it carries the data exactly (JSON escapes the controls itself).
    data = json.loads(cli(tmp_path, "sagas", "show", saga_id, "--json", **env).stdout)
    assert HOSTILE in data["error"]
