# Two entry points for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEBIAN_PACKAGES := netcat-openbsd chromium faketime postgresql

.PHONY: run test lint typecheck unit bench soak container-check debian-deps install test-install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet .

# Debian's nc (the README's one-liners and the end-to-end tests) and
# Chromium (browser tests) and libfaketime (faketime: the clock-step
# end-to-end test preloads its libfaketime.so.1) and PostgreSQL's server
# (the --db tests start their own; tests/postgres_support.py); installed only where missing.
debian-deps:
	@missing=""; \
	command -v nc >/dev/null || missing="$$missing netcat-openbsd"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	ls /usr/lib/*/faketime/libfaketime.so.1 /usr/lib/faketime/libfaketime.so.1 2>/dev/null | grep -q . \
	  || missing="$$missing faketime"; \
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

# axe-core (the browser tests' accessibility checks) from the npm registry
# into tests/.axe/ (git-ignored), with Debian's nodejs and npm where missing.
AXE_VERSION := 4.14.1
AXE := tests/.axe/node_modules/axe-core/axe.min.js

$(AXE):
	@command -v npm >/dev/null || { echo "installing Debian packages: nodejs npm"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm; }
	mkdir -p tests/.axe
	npm install --silent --no-audit --no-fund --prefix tests/.axe axe-core@$(AXE_VERSION)

.PHONY: axe
axe: $(AXE)

test-install: $(BIN)/python debian-deps $(AXE)
	$(BIN)/pip install --quiet '.[test]'

# The scheduler in the foreground, with one local worker beside it (its log
# in worker.log); Ctrl-C stops both.
run: install
	@echo "scheduler: TCP commands on 127.0.0.1:5050, dashboard on http://127.0.0.1:3000"
	@trap 'kill $$worker 2>/dev/null; wait $$worker 2>/dev/null' EXIT INT TERM; \
	$(BIN)/twistd --pidfile= --logfile=worker.log -n worker --name local & worker=$$!; \
	$(BIN)/twistd --pidfile= -n scheduler

lint: test-install
	$(BIN)/ruff check .

typecheck: test-install
	$(BIN)/mypy

unit: test-install
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

# Two pytest workers, a test file each at a time (most tests wait on
# processes, sockets and browsers, not on a core); then, alone, the few
# tests that hold a real-time bound (marked serial), which the other
# worker's load could break.
PYTEST = $(BIN)/python -m pytest -q -p no:cacheprovider

test: test-install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(PYTEST) -n 2 --dist loadfile -m "not serial" tests
	$(PYTEST) -m serial tests

# Benchmarks against Celery, APScheduler and the machine's ceiling; peers go
# into bench/.venv-peers, redis-server from Debian when missing.  Options
# through BENCH_ARGS, e.g. make bench BENCH_ARGS="--only many_tasks --tasks 1000000".
BENCH_ARGS ?=
bench: test-install
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# The soak case alone (real scheduler and workers; memory, tick lag, fires
# lost or doubled as it goes), for as long as you like: make soak SOAK_SECONDS=3600
SOAK_SECONDS ?= 600
soak: test-install
	$(BIN)/python bench/run.py --only soak --no-peers --soak-seconds $(SOAK_SECONDS)

# The image built and run for real from the committed tree (minutes; not
# part of `make test`): after any change to the Dockerfile, the entrypoint,
# docker-compose.yml or the service units.  The shared container checks
# (podman, and a stand-in base image where the official one cannot be
# pulled), then this project's stop-and-restart check, then the same with
# Docker where a Docker engine is installed.
CONTAINER_TOOLS ?= ../shared/tools/containers
container-check:
	@test -f $(CONTAINER_TOOLS)/run-all.sh || { \
	  echo "container-check needs the shared container checks in $(CONTAINER_TOOLS) (set CONTAINER_TOOLS=...)"; exit 2; }
	PROJECT_DIR=$(CURDIR) bash $(CONTAINER_TOOLS)/run-all.sh
	CONTAINER_TOOLS=$(CONTAINER_TOOLS) bash deploy/check-container-stop.sh
	CONTAINER_TOOLS=$(CONTAINER_TOOLS) PROJECT_DIR=$(CURDIR) bash deploy/check-compose-cluster.sh
	@if command -v dockerd >/dev/null; then PROJECT_DIR=$(CURDIR) bash $(CONTAINER_TOOLS)/check-docker.sh; \
	else echo "no Docker engine here (dockerd): the Docker variant was not run"; fi

clean:
	rm -rf $(VENV) build *.egg-info
