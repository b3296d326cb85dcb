"""Files holding secrets or state are private to their owner (0600, directories 0700) however
loose the umask, and the CLI warns, in one line saying what to run, when it meets one that other
users can read."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli import cli

from sagaz.private_files import (
    create_private_file,
    loose_mode_warnings,
    make_private_dir,
    open_private_append,
    write_private_file,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 000: without sagaz's own care every file below would come out 0666."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("open_umask")
def test_private_files_are_0600_and_directories_0700_whatever_the_umask(tmp_path: Path) -> None:
    assert create_private_file(tmp_path / "a") is True
    assert create_private_file(tmp_path / "a") is False
    loose = tmp_path / "b"
    loose.write_text("old")
    loose.chmod(0o644)
    write_private_file(loose, "new")  # an existing looser file is tightened
    write_private_file(tmp_path / "c", "x", atomic=True)
    os.close(open_private_append(tmp_path / "d.log"))
    make_private_dir(tmp_path / "e" / "f")
    assert {p.name: mode(p) for p in tmp_path.rglob("*") if p.name != "e"} == {
        "a": 0o600, "b": 0o600, "c": 0o600, "d.log": 0o600, "f": 0o700}
    assert loose.read_text() == "new"
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_warning_names_the_file_its_mode_and_the_command_that_fixes_it(
        tmp_path: Path) -> None:
    private, loose = tmp_path / "private", tmp_path / "loose"
    for path, bits in ((private, 0o600), (loose, 0o640)):
        path.write_text("")
        path.chmod(bits)
    assert loose_mode_warnings([private, loose, tmp_path / "missing"]) == [
        f"{loose} has mode 0640: other users of this machine can read it, and it holds secrets "
        f"or saga state; run `chmod 600 {loose}`"]


@pytest.mark.usefixtures("open_umask")
def test_sagaz_db_and_its_wal_and_shm_files_are_created_0600(tmp_path: Path) -> None:
    # The subprocess inherits umask 000: SQLite alone would create sagaz.db 0666 (0644 under the
    # usual 022).
    result = cli(tmp_path, "run", "sample_sagas:hello", "--ctx", '{"name": "ada"}')
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    # The WAL and shared-memory files exist while a connection is open: open one that stays.
    conn = sqlite3.connect(tmp_path / "sagaz.db")
    try:
        conn.execute("SELECT count(*) FROM saga_executions").fetchone()
        files = {p.name: mode(p) for p in tmp_path.glob("sagaz.db*")}
    finally:
        conn.close()
    assert files == {"sagaz.db": 0o600, "sagaz.db-wal": 0o600, "sagaz.db-shm": 0o600}


def test_a_nested_database_directory_is_created_0700(tmp_path: Path) -> None:
    result = cli(tmp_path, "run", "sample_sagas:hello",
                 SAGAZ_STORAGE_URL="sqlite:///state/sagas.db")
    assert result.returncode == 0, result.stderr
    assert mode(tmp_path / "state") == 0o700
    assert mode(tmp_path / "state" / "sagas.db") == 0o600


def test_sagaz_run_on_a_world_readable_sagaz_db_warns_once_on_stderr(tmp_path: Path) -> None:
    assert cli(tmp_path, "run", "sample_sagas:hello").returncode == 0
    db = tmp_path / "sagaz.db"
    db.chmod(0o644)
    for command in (["run", "sample_sagas:hello"], ["sagas", "list"]):
        result = cli(tmp_path, *command)
        assert result.returncode == 0, result.stderr
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
        assert warnings == [f"warning: {db} has mode 0644: other users of this machine can read "
                            f"it, and it holds secrets or saga state; run `chmod 600 {db}`"]
        assert "chmod" not in result.stdout
    db.chmod(0o600)
    assert "warning" not in cli(tmp_path, "sagas", "list").stderr
