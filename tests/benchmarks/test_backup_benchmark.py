"""Backups with pgBackRest (not part of the default suite: `make bench`; the full size is
`sagaz benchmark backup`, 1 GiB).

A small run on a temporary local cluster: restore throughput against `cp -a` of the same data
directory, and run() latency through pgbouncer-rw with archive_mode on and off. Prints the
report; asserts only what cannot flake: every measurement ran, the database reached its size,
WAL was archived while archive_mode was on and not while it was off.
"""

import pytest
from cluster_fixtures import free_base_port

from sagaz.benchmarks.backup import MIB, format_report, run_backup_benchmark


@pytest.mark.timeout(600)
def test_backup_benchmark_small() -> None:
    result = run_backup_benchmark(size_mb=64, runs=1, rate=200, seconds=2,
                                  base_port=free_base_port(2))
    print("\n" + format_report(result))
    assert result.database_bytes >= 64 * MIB
    (restored,) = result.restores
    assert restored.data_bytes >= result.database_bytes
    assert restored.mib_per_second > 0 and restored.copy_mib_per_second > 0
    (on,), (off,) = result.archiving_on, result.archiving_off
    assert on.archived_segments >= 1 and off.archived_segments == 0
    assert on.achieved_rate > 0 and off.achieved_rate > 0
