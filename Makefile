# Two entry points, both safe on a fresh clone: `make serve` and `make test`.
# Each creates .venv if needed and (re)installs only when pyproject.toml changed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: serve test lint bench bench-gateway audit

serve: $(VENV)/.installed-serve
	$(BIN)/voxgate serve

test: $(VENV)/.installed-test
	scripts/ensure-services.sh
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory audit
	$(BIN)/python -m pytest

# ruff (lint and format) and mypy (strict), as CI runs them.
lint: $(VENV)/.installed-test
	$(BIN)/ruff check voxgate tests bench
	$(BIN)/ruff format --check voxgate tests bench
	$(BIN)/mypy

# pip-audit over the installed packages: fails on a known vulnerability, says so in one line and
# passes where the vulnerability service cannot be reached.
audit: $(VENV)/.installed-test
	$(BIN)/python scripts/audit.py

bench: $(VENV)/.installed-test
	$(BIN)/python bench/bench_core.py

bench-gateway: $(VENV)/.installed-test
	scripts/ensure-services.sh
	$(BIN)/python bench/bench_gateway.py

# Load and fault run, see docs/benchmarks.md. Exits non-zero if a target is missed. Smaller:
# make bench-load BENCH_LOAD_ARGS="--clients 10 --seconds 8 --scenarios replicas"
.PHONY: bench-load
BENCH_LOAD_ARGS ?= --out bench/results/bench-load.json
bench-load: $(VENV)/.installed-test
	scripts/ensure-services.sh
	$(BIN)/python bench/bench_load.py $(BENCH_LOAD_ARGS)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-serve: pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@ $(VENV)/.installed-serve

# Pass-through overhead against the fake upstream and the LiteLLM proxy, see docs/benchmarks.md
# ("Pass-through vs LiteLLM"). Needs hey (apt-get install hey); creates bench/.venv-litellm
# (git-ignored) with pip install 'litellm[proxy]' the first time. Shorter: BENCH_UPSTREAM_ARGS="--scale 0.3"
.PHONY: bench-upstream
BENCH_UPSTREAM_ARGS ?= --out bench/results/upstream.json
bench-upstream: $(VENV)/.installed-test
	$(BIN)/python bench/bench_upstream.py $(BENCH_UPSTREAM_ARGS)
