# The two commands a user needs: `make up` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup up test bench faults load lint typecheck lock clean-leftovers

setup:
	@bash scripts/setup.sh

up: setup
	$(VENV)/bin/outgrow up

# Lint and types first (seconds): a style or type error fails the run like a test would.
test: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/run.py

# The reliability fault matrix (docs/reliability.md): needs root, ~15 min; not part of `make test`.
faults: setup
	$(PY) benchmarks/faults/run.py $(FAULTS_ARGS)

# Load: jobs moving while API and WebSocket clients hammer the control plane (root, ~3 min).
load: setup
	$(PY) benchmarks/load.py $(LOAD_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: setup
	$(VENV)/bin/mypy

# Re-resolve the full dependency set after changing pyproject.toml. Existing pins are kept
# (the old lock is a constraint): only what is new is resolved. To move a pin, delete its
# line from requirements.lock first.
lock:
	rm -rf /tmp/outgrow-lock && python3 -m venv /tmp/outgrow-lock
	/tmp/outgrow-lock/bin/pip install -q -c requirements.lock '.[dev]'
	/tmp/outgrow-lock/bin/pip freeze --exclude outgrow > requirements.lock

# Remove netns, links and cgroups left by a crashed run (prefix from OUTGROW_RESOURCE_PREFIX).
clean-leftovers: setup
	$(VENV)/bin/outgrow cleanup
