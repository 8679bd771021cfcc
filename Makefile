# Two commands a newcomer needs: `make demo` (the whole pipeline on embedded defaults) and `make test`.
# For every edit: `make check` (lint, format, types, the fast tests; under a minute).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
PYTEST_ARGS ?=

.PHONY: demo test check typecheck lint format bench bench-quick bench-frames test-faults dagster dagster-postgres clean-data

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[test,browser,parquet]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/property-pipeline demo

# The fast tests: no slow, fault-injection, browser, Dagster-daemon or PostgreSQL test (make test runs them all).
FAST_TESTS := not slow and not faults and not browser and not e2e and not postgres

test: $(STAMP)
	$(BIN)/ruff check property_pipeline property_pipeline_tests
	$(BIN)/ruff format --check property_pipeline property_pipeline_tests
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

check: $(STAMP)
	$(BIN)/ruff check property_pipeline property_pipeline_tests
	$(BIN)/ruff format --check property_pipeline property_pipeline_tests
	$(BIN)/mypy
	$(BIN)/pytest -q -n 2 -m "$(FAST_TESTS)" $(PYTEST_ARGS)

typecheck: $(STAMP)
	$(BIN)/mypy

test-faults: $(STAMP)
	$(BIN)/pytest -m faults $(PYTEST_ARGS)

# Benchmarks (see docs/performance.md): every target, 3 repeats, about 40 minutes on 2 cores.
# dlt, a baseline, comes from the optional `bench` extra. Results: benchmarks/results/*.json.
bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks

# CI smoke of the same machinery at tiny sizes: checks it runs and the exactly-once result, no timing goals.
bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick

# Memory of reading `properties` as a DataFrame, and of exports: 1,000,000 rows on PostgreSQL, about 5 minutes.
bench-frames: $(STAMP)
	$(BIN)/python -m benchmarks.frames_memory

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[bench]'
	touch $(BENCH_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check property_pipeline property_pipeline_tests

format: $(STAMP)
	$(BIN)/ruff format property_pipeline property_pipeline_tests
	$(BIN)/ruff check --fix property_pipeline property_pipeline_tests

# The Dagster UI and daemon (`dg dev`, the project's code location from [tool.dg] in pyproject.toml) on
# http://127.0.0.1:3000. VIRTUAL_ENV and PATH as if .venv were activated: dg then uses it, without warning.
DG := VIRTUAL_ENV=$(CURDIR)/$(VENV) PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dg

dagster: $(STAMP)
	mkdir -p dagster_home && DAGSTER_HOME=$(CURDIR)/dagster_home $(DG) dev -h 127.0.0.1 -p 3000

# The same UI on PostgreSQL instance storage: set DAGSTER_PG_HOST/PORT/USER/PASSWORD/DB first (dagster_home/README.md).
dagster-postgres: $(STAMP)
	mkdir -p dagster_home/postgres && cp dagster_home/dagster.postgres.yaml dagster_home/postgres/dagster.yaml
	DAGSTER_HOME=$(CURDIR)/dagster_home/postgres $(DG) dev -h 127.0.0.1 -p 3000

clean-data:
	rm -rf logs/property_payloads logs/pending logs/processing logs/processed logs/archive property_pipeline.db*
