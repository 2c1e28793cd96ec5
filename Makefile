# Two entry points for a fresh machine: `make demo` and `make test`. For development:
# `make test-fast` (no whole-study tests), `make lint` (ruff check + format check + mypy, as CI)
# and `make format` (ruff format).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-raw test test-fast lint format clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: $(STAMP)
	$(BIN)/abzflux demo --out demo

# the same study from the twin written as raw public products, through `abzflux prepare` (docs/prepare.md)
demo-raw: $(STAMP)
	test -e demo-raw/raw/recipe.toml || $(BIN)/abzflux twin-raw --out demo-raw/raw --resolution-km 100 --years 2001-2020
	$(BIN)/abzflux prepare demo-raw/raw/recipe.toml --out demo-raw/prepared
	$(BIN)/abzflux run demo-raw/prepared/config.toml --out demo-raw/run

# --dist load --maxschedchunk 2: one test at a time to the next free worker, in the order that
# tests/conftest.py sets (the shared study is built first; the longest tests do not end the run).
PYTEST := $(BIN)/python -m pytest -q -n auto --dist load --maxschedchunk 2

test: $(STAMP)
	$(PYTEST) --durations=30

# Unit and property tests: everything not marked `slow` (no study run, no killed run).
test-fast: $(STAMP)
	$(PYTEST) -m "not slow" --durations=15

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests

clean:
	rm -rf $(VENV) demo demo-raw
