# Command index. `make run` and `make test` are the two set-up commands in the README: each creates
# the virtual environment from the lock file first, so a fresh machine with Python 3.11 and make needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PACKAGES := ehr_core projections fhir_api

.PHONY: run serve demo test test-fast lint format typecheck imports spec bench clean browser

$(VENV)/.installed: pyproject.toml uv.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv==0.13.8
	UV_PYTHON_DOWNLOADS=never VIRTUAL_ENV=$(VENV) $(BIN)/uv sync --frozen --active --quiet
	touch $@

run: $(VENV)/.installed  ## the main job: the demo population across IMSS, ISSSTE and IMSS-Bienestar, loaded into SQLite (./ehr-data) and served
	$(BIN)/ehr demo

serve: $(VENV)/.installed  ## the FHIR server alone, on what ./ehr-data holds
	$(BIN)/ehr serve

demo: run

# The web view's browser tests drive Debian's Chromium through Playwright (browser downloads are not
# possible); installed when missing, with sudo unless already root.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

browser: $(CHROMIUM)  ## Debian's chromium for the browser tests (tests/e2e/web)

$(CHROMIUM):
	$(SUDO) apt-get update
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

test: $(VENV)/.installed browser  ## lint, types, layer rules, then the whole test suite (both backends)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest -n 2 --dist loadgroup

test-fast: $(VENV)/.installed
	$(BIN)/pytest -n 2 -m "not slow"

lint: $(VENV)/.installed
	$(BIN)/ruff check .
format: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
typecheck: $(VENV)/.installed
	$(BIN)/mypy
imports: $(VENV)/.installed
	$(BIN)/lint-imports

# Spec tables (ehr_core/spec/) regenerated from the FHIR R4 definitions in ../shared/corpus/spec/r4 (or
# $$EHR_CORPUS/spec/r4); tests/unit/test_spec_generated.py fails while a committed table differs.
spec: $(VENV)/.installed  ## regenerate the spec tables from the FHIR R4 definitions
	$(BIN)/python -m ehr_core.spec.generate

# wrk (a Debian package) is the benchmark's second load generator; sudo only when not root.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

bench: $(VENV)/.installed  ## benchmarks: every promised figure beside its baselines and its target, one table (BENCH_ARGS=--quick)
	command -v wrk >/dev/null 2>&1 || { $(SUDO) apt-get update && $(SUDO) apt-get install -y wrk; } \
		|| echo "bench: wrk could not be installed; the raw client's figures stand alone"
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) ehr-data .pytest_cache .mypy_cache .ruff_cache
