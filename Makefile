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

.PHONY: demo demo-benchmark test install clean wheelhouse gpu-check

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

# The GPU check (README "On a GPU"): `make wheelhouse` here (network), carry .whl/ to the
# offline GPU machine, run `make gpu-check OUT=DIR` there. DRY_RUN=1: the CPU pipeline.
WHEELHOUSE ?= .whl
OUT ?= gpu_check_out
DRY_RUN ?=
# the GPU machine has no .venv: its system python3 already has torch
CHECK_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))

wheelhouse:
	PYTHON=$(CHECK_PYTHON) scripts/wheelhouse.sh $(WHEELHOUSE)

gpu-check:
	$(CHECK_PYTHON) scripts/gpu_check.py --out $(OUT) --wheelhouse $(WHEELHOUSE) $(if $(filter 1 yes true,$(DRY_RUN)),--dry-run)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
