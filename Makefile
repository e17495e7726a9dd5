# Two commands do everything on a fresh machine:  make demo  |  make test
# Both create/refresh .venv, install what is missing, and are safe to re-run.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
DATA_DIR = /usr/share/datasets/fashion-mnist
SUDO    = $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_ARGS ?=
OUT ?= results/demo

.PHONY: demo test test-unit test-integration lint typecheck install data bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 first: on these machines it is a CPU build on local disk; a bare
# `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The dataset: Debian's package where apt exists and nothing else provides it.
data:
	@if [ -n "$$COLLABINFER_DATA" ] || [ -d $(DATA_DIR) ]; then \
	  echo "Fashion-MNIST: found"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "no apt-get: set COLLABINFER_DATA to a folder with the Fashion-MNIST IDX files"; \
	fi

demo: install data
	$(VENV)/bin/collabinfer demo --out $(OUT) $(DEMO_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports

typecheck: install
	$(VENV)/bin/mypy

test-unit: install
	$(VENV)/bin/pytest -q

test-integration: install data
	$(VENV)/bin/pytest -q -m integration

test: lint typecheck test-unit test-integration

bench: install
	$(PY) benchmarks/bench_planner.py
	$(PY) benchmarks/bench_chain_overhead.py
	$(PY) benchmarks/bench_server_hop.py
	$(PY) benchmarks/bench_load.py

clean:
	rm -rf $(VENV) results .pytest_cache .mypy_cache .ruff_cache
