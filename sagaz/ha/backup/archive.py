"""Is the WAL archive whole and flowing? What ``sagaz backup check`` reports and what a restore
verifies before it starts, so that a hole in the archive is named instead of ending recovery
early without a word (PostgreSQL takes a segment restore_command cannot fetch as the end of the
archive).

- Continuity: on every timeline, every segment from the oldest backup's first WAL to the newest
  archived one is in the repository (pgBackRest names each ``<segment>-<sha1>.<ext>``).
- Integrity: ``pgbackrest verify`` decompresses every archived segment and backup file and
  checks its checksum; the files it calls invalid are reported by name.
- Flow: the newest archived segment is younger than 2 x archive_timeout, or the primary has
  nothing left to archive (an idle primary switches no segment, so age alone would cry wolf).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sagaz.ha.backup.repo import BackupError, BackupRepository

__all__ = ["ArchiveReport", "check_archive", "missing_segments", "primary_archiver",
           "segment_index"]

_SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})-[0-9a-f]{40}(\.\w+)?$")
_SEGMENT_NAME = re.compile(r"^[0-9A-F]{24}$")  # not a .history or .partial file
_INVALID = re.compile(r"invalid result (\S+?):")
_SEGMENTS_PER_LOG = 0x100  # 16 MB segments: 0x100000000 / 16 MB per "log" (the middle field)


def segment_index(name: str) -> tuple[int, int]:
    """(timeline, position) of a WAL segment name such as 000000010000000000000003."""
    return int(name[:8], 16), int(name[8:16], 16) * _SEGMENTS_PER_LOG + int(name[16:24], 16)


def segment_name(timeline: int, position: int) -> str:
    return (f"{timeline:08X}{position // _SEGMENTS_PER_LOG:08X}"
            f"{position % _SEGMENTS_PER_LOG:08X}")


def archived_segments(archive: Path) -> dict[str, float]:
    """Segment name -> modification time of every complete segment in the repository."""
    found: dict[str, float] = {}
    for path in archive.glob("*/*/*"):
        match = _SEGMENT.match(path.name)
        if match:
            found[path.name[:24]] = path.stat().st_mtime
    return found


def missing_segments(names: set[str], since: str | None) -> list[str]:
    """The segments missing between the first (``since`` on its timeline) and the last one of
    each timeline."""
    by_timeline: dict[int, list[int]] = {}
    for name in names:
        timeline, position = segment_index(name)
        by_timeline.setdefault(timeline, []).append(position)
    start = segment_index(since) if since else None
    missing: list[str] = []
    for timeline, positions in sorted(by_timeline.items()):
        low = min(positions)
        if start and start[0] == timeline:
            low = max(low, start[1])
        present = set(positions)
        missing += [segment_name(timeline, p) for p in range(low, max(positions) + 1)
                    if p not in present]
    return missing


@dataclass
class ArchiveReport:
    newest: str | None = None
    newest_age: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_archive(repo: BackupRepository, *, now: Callable[[], float] = time.time,
                  verify: bool = True, primary: tuple[str, str] | None = None) -> ArchiveReport:
    """The three checks of the module docstring. ``primary``: (last archived segment, current
    segment) as the primary reports them (pg_stat_archiver, pg_walfile_name), when it runs."""
    repo.require_enabled()
    info = repo.info()
    report = ArchiveReport()
    segments = archived_segments(repo.archive_path)
    oldest = info.backups[0].wal_start if info.backups else None
    if not info.backups:
        report.problems.append("the repository holds no backup: take one with "
                               "`sagaz backup run --type full`")
    for name in missing_segments(set(segments), oldest)[:1]:
        report.problems.append(f"WAL segment {name} is missing from the repository "
                               f"{repo.archive_path}: a restore cannot replay past it; take a "
                               "new full backup (`sagaz backup run --type full`)")
    if verify:
        bad = _invalid_files(repo)
        if bad:
            report.problems.append(f"{bad[0]} in the repository is corrupt (pgbackrest verify: "
                                   f"{len(bad)} invalid file(s)); take a new full backup")
    if segments:
        report.newest = max(segments, key=lambda n: (segments[n], segment_index(n)))
        report.newest_age = max(0.0, now() - segments[report.newest])
    limit = 2 * repo.cluster.state.archive_timeout
    idle = primary is not None and _nothing_due(primary, set(segments))
    if primary is not None and _SEGMENT_NAME.match(primary[0]) and primary[0] not in segments:
        report.problems.append(f"WAL segment {primary[0]}, archived by the primary, is missing "
                               f"from the repository {repo.archive_path}")
    if not idle and (report.newest_age is None or report.newest_age > limit):
        age = "no WAL archived" if report.newest_age is None else \
            f"the newest archived WAL ({report.newest}) is {report.newest_age:.0f} s old"
        report.problems.append(f"archiving is not flowing: {age}, more than 2 x archive_timeout "
                               f"({limit} s); see the primary's postgres.log and "
                               f"{repo.directory / 'log'}")
    return report


def _nothing_due(primary: tuple[str, str], archived: set[str]) -> bool:
    """Whether every segment the primary has finished is archived (it is writing the next)."""
    last, current = primary
    if not current:
        return False
    timeline, position = segment_index(current)
    before = segment_name(timeline, position - 1)
    return before in archived or last == before or (not last and not archived)


def _invalid_files(repo: BackupRepository) -> list[str]:
    try:
        output = repo.run("--log-level-console=detail", "--job-retry=0", "verify",
                          what="pgbackrest verify")
    except BackupError as exc:
        return [str(exc)]
    # "15-1/0000000100000000/000000010000000000000004-<sha1>.lz4": name the segment.
    return [path.rsplit("/", 1)[-1].split("-", 1)[0] if "/" in path else path
            for path in _INVALID.findall(output)]


def primary_archiver(repo: BackupRepository) -> tuple[str, str] | None:
    """(last archived segment, current segment) from the primary, or None when it is down."""
    import psycopg

    cluster = repo.cluster
    try:
        with psycopg.connect(cluster.node_dsn(cluster.state.primary), autocommit=True,
                             connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT coalesce(last_archived_wal, ''), pg_walfile_name(pg_current_wal_lsn()) "
                "FROM pg_stat_archiver").fetchone()
    except psycopg.Error:
        return None
    return (str(row[0]), str(row[1])) if row else None
