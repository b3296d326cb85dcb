"""Engine overhead benchmark (not part of the default suite: run `make bench`).

Target from the engine issue: >= 20,000 three-step no-op sagas/s on one core, < 100 us engine
overhead per step. Prints the medians; asserts only the per-step bound with generous slack.
"""

from sagaz.benchmarks.engine import run_engine_benchmark


def test_engine_overhead() -> None:
    result = run_engine_benchmark()
    print(
        f"\nengine: {result.sagas_per_second:,.0f} sagas/s (median of {len(result.runs)}: "
        f"{', '.join(f'{r:,.0f}' for r in result.runs)}); "
        f"{result.us_per_step:.1f} us/step; marginal {result.marginal_us_per_step:.1f} us/step"
    )
    assert result.marginal_us_per_step < 100
