# imgcls — set-up, demo, tests, benchmarks.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PYTEST  := $(BIN)/python -m pytest

# The torch build that `make install` puts in the venv (docs/GPU.md, "The build"):
#   cpu   torch 2.13.0, the CPU wheel (constraints.txt): a ~1.5 GB venv
#   cuda  torch 2.14.1 + torchvision 0.29.1, the CUDA build (constraints-cuda.txt), which also runs on the CPU:
#         a ~5.5 GB venv
#   auto  cuda when `nvidia-smi -L` lists a GPU, cpu otherwise (the default)
# e.g. `make install TORCH=cuda`. Switching builds reinstalls torch; `make clean` first for a lean venv.
TORCH   ?= auto
ifeq ($(TORCH),auto)
BUILD   := $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU ' && echo cuda || echo cpu)
else
BUILD   := $(TORCH)
endif
CONSTRAINTS_cpu  := constraints.txt
CONSTRAINTS_cuda := constraints-cuda.txt
TORCH_cpu        := torch
TORCH_cuda       := torch torchvision
CONSTRAINTS      := $(CONSTRAINTS_$(BUILD))
STAMP            := $(VENV)/.install-stamp-$(BUILD)
PIP              := $(BIN)/pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS)

.PHONY: install demo test test-all bench faults lint format clean

install: $(STAMP)

# Re-runs only when the dependency list or the chosen build's pins change (or the build changes).
$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -n "$(CONSTRAINTS)" || { echo "make: TORCH=$(TORCH): choose cpu, cuda or auto" >&2; exit 2; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	rm -f $(VENV)/.install-stamp*
	$(PIP) $(TORCH_$(BUILD))
	$(PIP) -e '.[dev,classic]'
	touch $(STAMP)

demo: install
	$(BIN)/python -m imgcls.demo

lint: install
	$(BIN)/ruff check src tests tools benchmarks
	$(BIN)/ruff format --check src tests tools benchmarks
	$(BIN)/python tools/model_table.py --check

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
