# Two entry points for a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

demo: $(STAMP)
	$(BIN)/abzflux demo --out demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile --durations=30

clean:
	rm -rf $(VENV) demo
