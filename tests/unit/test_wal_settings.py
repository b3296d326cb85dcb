"""The WAL cap of every PostgreSQL server sagaz configures (sagaz.ha.wal_settings)."""

from __future__ import annotations

import pytest

from sagaz.errors import ConfigurationError
from sagaz.ha.wal_settings import (
    DEFAULT_MAX_SLOT_WAL_KEEP_SIZE,
    normalize_wal_size,
    wal_retention_settings,
)


def test_the_default_caps_slots_at_a_few_gigabytes() -> None:
    assert wal_retention_settings(DEFAULT_MAX_SLOT_WAL_KEEP_SIZE) == {
        "max_slot_wal_keep_size": "'4GB'", "wal_keep_size": "'256MB'"}


@pytest.mark.parametrize(("given", "spelled"), [
    ("4GB", "4GB"), ("4gb", "4GB"), (" 512 mb ", "512MB"), ("1TB", "1TB"), ("007MB", "7MB"),
])
def test_sizes_are_spelled_as_postgresql_reads_them(given: str, spelled: str) -> None:
    assert normalize_wal_size(given) == spelled


def test_wal_keep_size_never_raises_the_cap() -> None:
    # PostgreSQL keeps max(wal_keep_size, the slot cap) for a slot: a larger wal_keep_size
    # would silently lift the cap.
    assert wal_retention_settings("32MB")["wal_keep_size"] == "'32MB'"
    assert wal_retention_settings("1GB")["wal_keep_size"] == "'256MB'"


@pytest.mark.parametrize("size", ["", "4", "-1", "0MB", "4 apples", "1.5GB", "4GiB", "16kB",
                                  "2048TB", "4GB; DROP"])
def test_anything_else_is_a_one_line_usage_error(size: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        wal_retention_settings(size)
    message = str(caught.value)
    assert "\n" not in message
    assert f"--max-slot-wal-keep-size {size!r} is not a WAL size" in message
    assert "SAGAZ_MAX_SLOT_WAL_KEEP_SIZE" in message
