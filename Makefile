# trustfleet — every target sets itself up from the project's own files.
#   make test   every test (CPython, MicroPython VM, real openssl)
#   make demo   the main job: the fleet demo (broker, 50 devices, staged rollout, auto-halt)
#   make bench  the benchmarks, printing tables
#   make mutate every mutant of the trusted device core (tools/mutate.py; ~35 min on 2 cores)
#   make fuzz   a longer fuzz run of every decoder (60 s a target)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: all test demo bench lint fuzz mutate clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

.PHONY: setup
setup: $(STAMP) $(NODE_STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check device server tests benchmarks tools

# A sampled mutation run (60 mutants, the seed rotates daily), then every test.
test: setup lint
	$(PY) tools/mutate.py --sample 60 --seed daily --strict
	$(PY) -m pytest

mutate: setup
	$(PY) tools/mutate.py --strict

demo: setup
	$(VENV)/bin/trustfleet demo --out demo-out

bench: setup
	$(PY) benchmarks/bench_p256.py
	$(PY) benchmarks/bench_bundle.py
	$(PY) benchmarks/bench_install.py
	$(PY) benchmarks/bench_broker.py
	$(PY) benchmarks/bench_ingest.py
	$(PY) benchmarks/bench_fleet.py

fuzz: setup
	$(PY) tools/fuzz_decoders.py --target all --seconds 60

clean:
	rm -rf $(VENV) node_modules demo-out .pytest_cache .ruff_cache .hypothesis .mutate-cache
