"""The pure parts of backups: WAL segment arithmetic, holes in the archive, restore targets and
the archive_command."""

from __future__ import annotations

import shlex

import pytest

from sagaz.errors import ConfigurationError
from sagaz.ha.archive_settings import archive_settings, check_archive_timeout
from sagaz.ha.backup.archive import missing_segments, segment_index, segment_name
from sagaz.ha.backup.restore import RestoreTarget


def test_segment_names_round_trip_across_a_log_boundary() -> None:
    assert segment_index("0000000100000000000000FF") == (1, 0xFF)
    assert segment_name(1, 0x100) == "000000010000000100000000"
    assert segment_index("000000020000000100000003") == (2, 0x103)


def test_a_hole_is_named_and_the_range_starts_at_the_oldest_backup() -> None:
    names = {"000000010000000000000003", "000000010000000000000004",
             "000000010000000000000006", "0000000100000000000000FF",
             "000000010000000100000000", "00000002000000010000000A",
             "00000002000000010000000B"}
    missing = missing_segments(names, "000000010000000000000004")
    assert missing[0] == "000000010000000000000005"
    assert "000000010000000000000007" in missing and "000000010000000000000003" not in missing
    # A timeline is checked from its own first segment: timeline 2 has no hole.
    assert not [m for m in missing if m.startswith("00000002")]
    assert missing_segments({"000000010000000000000004"}, None) == []


def test_restore_targets() -> None:
    assert RestoreTarget.parse("latest").pgbackrest_options() == ["--type=default"]
    assert RestoreTarget.parse("0/5000050").pgbackrest_options()[:2] == [
        "--type=lsn", "--target=0/5000050"]
    when = RestoreTarget.parse("2026-01-31T12:00:00.250Z")
    assert when.pgbackrest_options() == ["--type=time",
                                         "--target=2026-01-31 12:00:00.250000+00:00",
                                         "--target-action=promote"]
    with pytest.raises(ConfigurationError, match="no time zone offset"):
        RestoreTarget.parse("2026-01-31T12:00:00")
    with pytest.raises(ConfigurationError, match="neither `latest`"):
        RestoreTarget.parse("yesterday")


def test_archive_settings_quote_paths_and_bound_the_timeout() -> None:
    settings = archive_settings("/srv/o'brien/pgbackrest.conf", "/srv/node0/data",
                                "/srv/spool/node0", 60)
    assert settings["archive_mode"] == "on"
    assert settings["archive_timeout"] == "'60s'"
    command = settings["archive_command"]
    # shell-quoted for the shell, then the quote doubled for postgresql.conf
    assert "--pg1-path=/srv/node0/data" in command and "--archive-async" in command
    assert command.startswith("'") and command.endswith("'")
    argv = shlex.split(command[1:-1].replace("''", "'"))
    assert argv[1] == "--config=/srv/o'brien/pgbackrest.conf" and argv[-2:] == [
        "archive-push", "%p"]
    with pytest.raises(ConfigurationError, match="--archive-timeout"):
        check_archive_timeout(0)
