# The README's two commands: `make run` (the main job) and `make test` (the tests).
# Each does its own set-up: a virtual environment in .venv with torch pinned to
# 2.13.0 (a local CPU wheel here; an unpinned torch pulls a multi-GB CUDA build).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Tests run on every core (pytest-xdist): most of a cold run is numba compiling
# kernels, one function at a time per process.
XDIST := -n auto

.PHONY: setup run test test-all bench lint chromium

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[triton,dask,dev]'
	touch $(STAMP)

setup: $(STAMP)

# Headless Chromium for the `browser` test (skipped with a reason where absent).
chromium:
	@command -v chromium >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium could not be installed; the browser test will be skipped")

run: setup
	$(BIN)/elbobench run --quick

test: setup chromium
	$(BIN)/python -m pytest -q $(XDIST)

# also the exhaustive sweeps marked `slow`
test-all: setup chromium
	$(BIN)/python -m pytest -q $(XDIST) --slow

bench: setup
	$(BIN)/python -m pytest --benchmark -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
