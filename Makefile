PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-pg serve lint bench bench-scale clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/gridcharge demo --out report

test: $(STAMP)
	$(BIN)/pytest -q

# The API tests against a real PostgreSQL server: a throw-away one from .ci/postgres.sh (stopped
# afterwards), or the one GRIDCHARGE_TEST_DATABASE_URL already names (the role needs CREATEDB).
test-pg: $(STAMP)
	@bash -c 'set -euo pipefail; \
	  if [ -z "$${GRIDCHARGE_TEST_DATABASE_URL:-}" ]; then \
	    source .ci/postgres.sh; \
	    trap gridcharge_pg_cleanup EXIT; trap "exit 130" INT; trap "exit 143" TERM; \
	  fi; \
	  echo "$(BIN)/pytest -q tests/api  (GRIDCHARGE_TEST_DATABASE_URL=$$GRIDCHARGE_TEST_DATABASE_URL)"; \
	  $(BIN)/pytest -q tests/api'

# The service on http://127.0.0.1:8000 (settings from GRIDCHARGE_* variables, e.g.
# GRIDCHARGE_DATABASE_URL; keys: .venv/bin/gridcharge keys create --role admin).
serve: $(STAMP)
	$(BIN)/gridcharge serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

# decomposed and warm solves against the monolithic LP, 200 to 64,000 connectors (~10 min)
bench-scale: $(STAMP)
	$(BIN)/python -m benchmarks.scale

clean:
	rm -rf $(VENV) report .pytest_cache .mypy_cache .ruff_cache
