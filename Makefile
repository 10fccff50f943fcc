# drctl: install, test, demo. Every target installs what it needs on a fresh Debian machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LAB_DIR ?= $(CURDIR)/.lab

.PHONY: install deps test lint demo lab-up lab-down bench bench-failover bench-verify clean

deps:  ## Debian packages for the real servers the tests and the lab start
	@./scripts/install-deps.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: deps $(STAMP)  ## venv with drctl and its test tools

lint: $(STAMP)
	$(VENV)/bin/ruff check drctl tests bench
	$(VENV)/bin/mypy drctl

test: install lint
	$(VENV)/bin/pytest -q

demo: install  ## start the local lab and fail its services over, for real
	@./scripts/demo.sh

lab-up: install
	$(VENV)/bin/drctl lab up --dir $(LAB_DIR)

lab-down:
	$(VENV)/bin/drctl lab down --dir $(LAB_DIR)

clean:
	rm -rf $(VENV) .lab .pytest_cache .mypy_cache .ruff_cache

.PHONY: bench-critical-path bench-startup bench-crash bench-fuzz

bench: bench-failover bench-critical-path bench-startup bench-verify bench-crash bench-fuzz  ## every benchmark; each prints figures, the last line as JSON

bench-failover: install  ## the lab plus 40 services failed over and back: wall time, SSH logins, DNS UPDATEs
	$(PY) bench/bench_failover.py --services 40

bench-critical-path: install  ## (root: a network namespace) drctl against bench/floor.py, healthy and black-holed; 10-500 services
	$(PY) bench/bench_critical_path.py

bench-startup: install  ## drctl --help and drctl validate of a 1,000-service inventory
	$(PY) bench/bench_startup.py

bench-verify: install  ## drctl verify vs rsync -rcn on ~2,000 files / 1 GB per side, a 1e6-row table, a 10 GiB tree
	$(PY) bench/bench_verify.py

bench-crash: install  ## failovers killed at random moments, then resumed: the world converges
	$(PY) bench/crash_harness.py --trials 200

bench-fuzz: install  ## malformed inventories and playbooks: refused cleanly, never a traceback
	$(PY) bench/fuzz_inputs.py --cases 10000
