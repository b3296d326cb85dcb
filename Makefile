# The two commands of the README: `make demo` and `make test`. Both bootstrap .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Runs the demo saga (a success and a compensated failure) on the embedded SQLite default.
demo: $(STAMP)
	$(BIN)/sagaz demo

lint: $(STAMP)
	$(BIN)/ruff check sagaz tests
	$(BIN)/mypy

## Lint, type-check, then the whole test suite (benchmarks excluded).
test: lint
	$(BIN)/pytest

## Benchmarks, pinned to one core; prints medians.
bench: $(STAMP)
	taskset -c 0 $(BIN)/pytest tests/benchmarks -s -q -o addopts=-ra

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info sagaz.db*
