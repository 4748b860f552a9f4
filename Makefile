# trustfleet — every target sets itself up from the project's own files.
#   make test   every test (CPython, MicroPython VM, real openssl)
#   make demo   the main job: the fleet demo (broker, 50 devices, staged rollout, auto-halt) and
#               its fleet console (KEEP=SECONDS keeps it up that long after the last step)
#   make bench  the benchmarks, printing tables
#   make mutate every mutant of the trusted device core (tools/mutate.py; ~35 min on 2 cores)
#   make fuzz   a longer fuzz run of every decoder (60 s a target)
#   make firmware  the firmware stand-in: 32-bit MicroPython with the device package frozen
#                  in, built into ~/.cache/trustfleet/firmware (docs/firmware.md)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: all test demo bench lint fuzz mutate firmware toolchain32 clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# setup: the venv and node_modules (Node runs only the MicroPython VM tests and
# benchmarks); setup-python: the venv alone, all the demo, firmware and fuzz need.
.PHONY: setup setup-python
setup: $(STAMP) $(NODE_STAMP)
setup-python: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check device server tests benchmarks tools

# A sampled mutation run (60 mutants, the seed rotates daily), then every test.
test: setup lint firmware
	$(PY) tools/mutate.py --sample 60 --seed daily --strict
	$(PY) -m pytest

mutate: setup
	$(PY) tools/mutate.py --strict

# make demo KEEP=300: keep the fleet and its console up 300 s after the last step (else until Enter)
demo: setup-python
	$(VENV)/bin/trustfleet demo --out demo-out $(if $(KEEP),--keep $(KEEP))

bench: setup firmware
	$(PY) benchmarks/bench_p256.py
	$(PY) benchmarks/bench_bundle.py
	$(PY) benchmarks/bench_install.py
	$(PY) benchmarks/bench_board.py
	$(PY) benchmarks/bench_board_p256.py
	$(PY) benchmarks/bench_broker.py
	$(PY) benchmarks/bench_broker_caps.py
	$(PY) benchmarks/bench_ingest.py
	$(PY) benchmarks/bench_message_decode.py
	$(PY) benchmarks/bench_fleet.py
	$(PY) benchmarks/bench_serve_flood.py
	$(PY) benchmarks/bench_serve_restore.py
	$(PY) benchmarks/bench_report_retention.py
	$(PY) benchmarks/bench_sim_faults.py

fuzz: setup-python
	$(PY) tools/fuzz_decoders.py --target all --seconds 60

# The firmware stand-in is built 32-bit: install Debian's gcc-multilib when gcc
# cannot link a 32-bit program (as root; otherwise say what to run).
toolchain32:
	@tmp=$$(mktemp -d) && printf 'int main(void) { return 0; }\n' > $$tmp/t.c && \
	if gcc -m32 $$tmp/t.c -o $$tmp/t 2>/dev/null; then rm -rf $$tmp; else rm -rf $$tmp; \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	        echo "installing gcc-multilib (32-bit toolchain for the firmware stand-in)"; \
	        apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc-multilib; \
	    else \
	        echo "the firmware stand-in needs a 32-bit C toolchain: sudo apt-get install gcc-multilib" >&2; \
	        exit 1; \
	    fi; \
	fi

# Built once into the cache; rebuilt only when the frozen code or the build inputs change.
firmware: setup-python toolchain32
	$(PY) tools/firmware.py build

clean:
	rm -rf $(VENV) node_modules demo-out .pytest_cache .ruff_cache .hypothesis .mutate-cache
