# Plain entry points. `make test` is the README's test command and what .ci/run calls.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv install kit serve test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Re-installs only when pyproject.toml changes.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv install: $(STAMP)

kit: $(STAMP)
	$(BIN)/python -m deployments.kit build --size tiny models/tiny

# Builds the tiny kit if missing, prints a demo API key, serves serve_config.local.yaml on 127.0.0.1:8000.
serve: $(STAMP)
	$(BIN)/python -m deployments.local

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) models/tiny .pytest_cache
