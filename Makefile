# imgcls — set-up, demo, tests, benchmarks.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.install-stamp
PYTEST  := $(BIN)/python -m pytest

.PHONY: install demo test test-all bench faults lint format clean

install: $(STAMP)

# Re-runs only when the dependency list or the torch pin changes.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/python -m imgcls.demo

lint: install
	$(BIN)/ruff check src tests tools benchmarks
	$(BIN)/ruff format --check src tests tools benchmarks

format: install
	$(BIN)/ruff format src tests tools benchmarks
	$(BIN)/ruff check --fix src tests tools benchmarks

test: lint
	$(PYTEST) -q -m "not slow and not gpu"

test-all: install
	$(PYTEST) -q

bench: install
	$(BIN)/python -m benchmarks.run

faults: install
	$(PYTEST) -q -m faults

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
