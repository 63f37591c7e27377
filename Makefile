# Two commands do all the set-up on a fresh machine:
#   make demo   - the main job: a small CPU cost sweep + extrapolation run, with plots
#   make test   - the test suite (what CI runs); `make test-fast` - all but the slow tests
# Both create .venv on first use. TORCH pins a CPU build for CPU machines; on a GPU
# machine use e.g.  make test TORCH="torch" TORCH_INDEX=https://download.pytorch.org/whl/cu126
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed
KERNELS_STAMP := $(VENV)/.kernels

.PHONY: demo demo-benchmark test test-fast install kernels clean wheelhouse gpu-check

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

# The pinned kernel packages (scripts/pins.py reads pyproject.toml) for the Triton kernel
# tier: triton and fla-core from wheels; mamba-ssm as its no-CUDA build (pure Python +
# Triton; a plain install fails parsing torch.version.cuda, None on a CPU build of torch;
# its setup.py imports torch, so no build isolation: setuptools and packaging come first).
# A CUDA build of torch brings its own triton, which stays. ~1 GB on disk, mostly triton.
# Not needed by `make demo`.
MAMBA_NO_CUDA := MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE
kernels: $(KERNELS_STAMP)

$(KERNELS_STAMP): $(STAMP) pyproject.toml
	triton=$$($(BIN)/python scripts/pins.py triton); \
	$(BIN)/python -c 'import sys, torch; sys.exit(torch.version.cuda is not None)' || triton=""; \
	$(PIP) install -q $$triton $$($(BIN)/python scripts/pins.py fla-core) setuptools packaging
	$(MAMBA_NO_CUDA) $(PIP) install -q --no-build-isolation --no-deps $$($(BIN)/python scripts/pins.py mamba-ssm)
	touch $(KERNELS_STAMP)

# Two pytest calls: the Triton kernel tier needs TRITON_INTERPRET=1 before its kernels are
# defined, and the rest of the suite runs without it.
test: $(STAMP) $(KERNELS_STAMP)
	$(BIN)/python -m pytest -q
	ARCHBENCH_REQUIRE_KERNELS=1 $(BIN)/python -m pytest -q -m triton_interpret tests/triton_interpret

# The edit-test loop: every test not marked `slow` (no CLI subprocess, no 4K-token
# conformance, no real training run): about a minute of CPU on one core. `make test` runs all.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

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
