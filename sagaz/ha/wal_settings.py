"""How much WAL a primary keeps for its replicas: the one place that decides it for the local
cluster, docker-compose and Kubernetes (no database driver needed: ``sagaz init`` imports it).

Each replica has a physical replication slot on the primary, so that WAL it has not received yet
survives while it is down. Without a cap (``max_slot_wal_keep_size = -1``, PostgreSQL's default)
a replica that stays down keeps WAL on the primary until its disk is full, and then the primary
stops: one dead replica takes the writes down. With the cap, at a checkpoint the primary
invalidates a slot whose replica is further behind than ``max_slot_wal_keep_size`` (the slot's
``wal_status`` in ``pg_replication_slots`` becomes ``lost``) and removes the WAL. That replica can
then never stream again (the WAL it needs is gone, whatever ``wal_keep_size`` says): it needs a
fresh base backup. ``sagaz dev status`` reports it, the supervisor rebuilds it
(:mod:`sagaz.ha.slots`), and the replicas of the generated deployments clone themselves again on
their next start (``replica-bootstrap.sh``).

PostgreSQL counts the cap in whole WAL segments (16 MB by default), rounded down: a cap below
16 MB retains no segment at all beyond the current one.
"""

from __future__ import annotations

import re

from sagaz.errors import ConfigurationError

__all__ = ["DEFAULT_MAX_SLOT_WAL_KEEP_SIZE", "MAX_SLOT_WAL_KEEP_SIZE_ENV", "WAL_KEEP_SIZE_MB",
           "normalize_wal_size", "wal_retention_settings"]

DEFAULT_MAX_SLOT_WAL_KEEP_SIZE = "4GB"
"""A replica may fall this far behind (about an hour of a busy OLTP primary) before its slot is
given up: a restart or a short outage never costs a new base backup, and the primary's disk needs
this much room for replicas beyond what it uses itself."""

MAX_SLOT_WAL_KEEP_SIZE_ENV = "SAGAZ_MAX_SLOT_WAL_KEEP_SIZE"
"""The variable ``sagaz dev up`` and ``sagaz init`` read for ``--max-slot-wal-keep-size``."""

WAL_KEEP_SIZE_MB = 256
"""WAL kept for a standby without a slot (or one being cloned), capped by the slot cap: both
protect the same WAL, and PostgreSQL keeps the larger of the two, so a larger wal_keep_size would
silently raise the cap."""

_SIZE = re.compile(r"^\s*(?P<number>[0-9]+)\s*(?P<unit>MB|GB|TB)\s*$", re.IGNORECASE)
_MB = {"MB": 1, "GB": 1024, "TB": 1024 * 1024}
_LARGEST_MB = 2**31 - 1  # PostgreSQL keeps the setting in MB as an int


def _megabytes(size: str) -> int:
    match = _SIZE.match(size)
    megabytes = int(match["number"]) * _MB[match["unit"].upper()] if match else 0
    if not 1 <= megabytes <= _LARGEST_MB:
        raise ConfigurationError(
            f"--max-slot-wal-keep-size {size!r} is not a WAL size: use a whole number of MB, GB "
            f"or TB between 1MB and 2047TB, e.g. {DEFAULT_MAX_SLOT_WAL_KEEP_SIZE} (the default; "
            f"also {MAX_SLOT_WAL_KEEP_SIZE_ENV})")
    return megabytes


def normalize_wal_size(size: str) -> str:
    """``size`` as PostgreSQL spells it (``4gb`` -> ``4GB``), or a one-line ConfigurationError."""
    _megabytes(size)
    match = _SIZE.match(size)
    assert match is not None
    return f"{int(match['number'])}{match['unit'].upper()}"


def wal_retention_settings(max_slot_wal_keep_size: str) -> dict[str, str]:
    """The postgresql.conf settings (values quoted as PostgreSQL writes them) for a cap."""
    cap = normalize_wal_size(max_slot_wal_keep_size)
    keep = min(WAL_KEEP_SIZE_MB, _megabytes(cap))
    return {"max_slot_wal_keep_size": f"'{cap}'", "wal_keep_size": f"'{keep}MB'"}
