"""WAL archiving through pgBackRest: the postgresql.conf settings every node of a cluster gets
when backups are on (no database driver needed: ``sagaz init`` imports it too).

Every node carries the same ``archive_command`` (only its own data directory and spool differ), so
whichever node is the primary archives: a replica with ``archive_mode = on`` archives nothing
while it replays, and starts archiving on its own timeline the moment it is promoted; pgBackRest
keeps each timeline's WAL apart and follows the history files on restore.

``archive_timeout`` bounds the RPO of an idle-ish primary: a WAL segment that is not full is
switched and archived after that many seconds, so on total loss of the cluster at most that
much acknowledged work is missing from the repository (plus the time the asynchronous push
takes, well under a second on a local repository).
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from sagaz.errors import ConfigurationError

__all__ = ["ARCHIVE_TIMEOUT_ENV", "DEFAULT_ARCHIVE_TIMEOUT", "DEFAULT_RETENTION_FULL",
           "STANZA", "archive_command", "archive_settings", "check_archive_timeout",
           "find_pgbackrest"]

STANZA = "sagaz"
"""The pgBackRest stanza of a sagaz cluster (one cluster per repository)."""

DEFAULT_ARCHIVE_TIMEOUT = 60
"""Seconds before a partly filled WAL segment is archived anyway: the RPO bound."""

ARCHIVE_TIMEOUT_ENV = "SAGAZ_ARCHIVE_TIMEOUT"

DEFAULT_RETENTION_FULL = 2
"""Full backups kept (pgBackRest ``repo1-retention-full``); WAL older than the oldest is expired."""


def check_archive_timeout(seconds: int) -> int:
    if not 1 <= seconds <= 3600:
        raise ConfigurationError(
            f"--archive-timeout {seconds} is out of range: give 1 to 3600 seconds (default "
            f"{DEFAULT_ARCHIVE_TIMEOUT}; also {ARCHIVE_TIMEOUT_ENV})")
    return seconds


def archive_command(config: str, pg_path: str, spool: str) -> str:
    """The archive_command of one node: async push (the server hands the segment to a background
    pgBackRest process, which pushes segments in parallel and acknowledges each once it is in
    the repository). ``--pg1-path`` is the node's own data directory: pgBackRest resolves the
    relative ``%p`` against it, and reads the system id there to refuse a foreign cluster."""
    argv = ["pgbackrest", f"--config={config}", f"--stanza={STANZA}", f"--pg1-path={pg_path}",
            "--archive-async", f"--spool-path={spool}"]
    return " ".join(shlex.quote(a) for a in argv) + " archive-push %p"


def archive_settings(config: str, pg_path: str, spool: str, timeout: int) -> dict[str, str]:
    """The postgresql.conf settings (values quoted as PostgreSQL writes them)."""
    command = archive_command(config, pg_path, spool).replace("'", "''")
    return {"archive_mode": "on", "archive_command": f"'{command}'",
            "archive_timeout": f"'{check_archive_timeout(timeout)}s'"}


def find_pgbackrest() -> str:
    found = shutil.which("pgbackrest") or ("/usr/bin/pgbackrest"
                                           if Path("/usr/bin/pgbackrest").exists() else None)
    if found is None:
        raise ConfigurationError(
            "pgbackrest is not installed: install it (Debian/Ubuntu: apt-get install pgbackrest) "
            "to take backups of the cluster")
    return found
