# Plain entry points. `make test` is the README's test command and what .ci/run calls.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv install deps kit serve stop pyc test test-fast bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Re-installs only when pyproject.toml changes.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv install: $(STAMP)

kit: $(STAMP)
	$(BIN)/python -m models.kit build --size tiny checkpoints/tiny

# Builds the tiny kit if missing, makes a demo API key, starts a local Ray head (`ray start`, token auth
# on, dashboard on 127.0.0.1:8265) and `serve deploy`s serve_config.local.yaml on 127.0.0.1:8000;
# returns once /readyz answers 200. `make stop` shuts Serve down and stops that cluster only.
serve: $(STAMP) pyc
	$(BIN)/python -m deployments.local up

# The checkout's own modules compiled to bytecode (pip compiles what it installs, not an editable source tree):
# each Ray worker, replica and job actor that imports them then reads bytecode instead of compiling ~17k lines
# (0.6-0.9 s of a process that imports the service), also where PYTHONDONTWRITEBYTECODE keeps Python from
# caching it. Incremental: only changed files are compiled again.
pyc: $(STAMP)
	@$(BIN)/python -m compileall -q deployments storage pipelines models benchmarks tests >/dev/null

stop: $(STAMP)
	$(BIN)/python -m deployments.local stop

# System packages the tests start for real (Debian's): found, or installed with apt-get (as root, or
# through sudo). `make test` and .ci/run both come through here. prometheus brings promtool too; chromium is the
# browser tests/browser/ drives.
DEBS := redis-server prometheus chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
deps:
	@missing=""; for bin in $(DEBS); do command -v $$bin >/dev/null 2>&1 || missing="$$missing $$bin"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null \
		|| { echo "could not install$$missing: install it with your package manager, then run make test again"; exit 1; }; \
	fi

# The tiers with a cluster or a server first, one test at a time (they share the machine with their cluster);
# then tests/unit/, whose tests run in their own process only, on two workers.
test: $(STAMP) deps pyc
	$(BIN)/python -m pytest -m "not unit"
	$(BIN)/python -m pytest -m unit -n 2

# The inner loop: tests/unit/ only (no Ray, no server process; the in-process HTTP tier included), a few minutes.
test-fast: $(STAMP) pyc
	$(BIN)/python -m pytest tests/unit -n 2

clean:
	rm -rf $(VENV) checkpoints/tiny .pytest_cache
