"""PostgreSQL write-path benchmark (not part of the default suite: run `make bench`).

Targets from the PostgreSQL storage issue, on a 2-core machine with PostgreSQL on it: >= 3,500
sagas/s direct, >= 3,000 through PgBouncer (transaction mode), run() p99 < 20 ms at 1,000
sagas/s offered. Prints the medians; asserts only what cannot flake on a loaded machine: the
benchmark ran, every saga wrote exactly its 4 state rows and its 1 audit row (completed), and
PgBouncer costs less than half.
"""

import pytest

from sagaz.benchmarks.postgres import format_report, run_postgres_benchmark


@pytest.mark.timeout(900)
def test_postgres_write_path() -> None:
    result = run_postgres_benchmark()
    print("\n" + format_report(result))
    direct, pooled = result.paths
    assert result.rows_per_saga == pytest.approx(4.0)
    assert result.audit_rows_per_saga == pytest.approx(1.0)
    assert pooled.rate > direct.rate / 2
