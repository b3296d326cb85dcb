"""Benchmarks shipped with the package, so ``sagaz benchmark`` can run them anywhere."""
