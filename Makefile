# Two commands do all the set-up on a fresh machine:
#   make demo   - the main job: a small CPU cost sweep + extrapolation run, with plots
#   make test   - the test suite (what CI runs)
# Both create .venv on first use. TORCH pins a CPU build for CPU machines; on a GPU
# machine use e.g.  make test TORCH="torch" TORCH_INDEX=https://download.pytorch.org/whl/cu126
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed

.PHONY: demo demo-benchmark test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m harness.demo

# The demo's cost record (results/cpu/demo/demo_benchmark.json): run on an idle machine.
demo-benchmark: $(STAMP)
	$(BIN)/python scripts/demo_benchmark.py

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
