import os
import re
import sys
from pathlib import Path

# Test models are tiny: one thread is as fast, and immune to oversubscription when the
# machine is shared (two threads on a loaded 2-core box run several times slower). numpy's
# OpenBLAS (the Triton interpreter's tl.dot) reads its thread count when numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# On an NVIDIA GPU, Triton's tl.dot on fp32 operands runs at TF32 (10-bit mantissa) unless
# the kernel names a precision, and fla's and mamba_ssm's kernels do not: measured on an
# H200, that alone put the fused kernels 1e-2..2e-1 off the fp32 PyTorch forms, failing
# fp32 tolerances (results/nvidia_h200/README.md). The GPU tests compare at fp32, so they
# compile those kernels at full fp32 ("ieee", as fla's own tests do), into a Triton cache
# of their own: the knob is read while a kernel is traced, so a kernel cached at TF32 would
# be reused. The TF32 default that users get is checked on its own, in a fresh process
# (tests/archs/test_fused_tf32.py). A value set by the caller is kept.
if "TRITON_F32_DEFAULT" not in os.environ:
    os.environ["TRITON_F32_DEFAULT"] = "ieee"
    os.environ.setdefault("TRITON_CACHE_DIR", str(Path.home() / ".triton" / "cache-f32-ieee"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

# Tests compose the apps' configs with Hydra directly; the apps register the schemas those
# configs name in their main(), not on import (harness.config.compose does it for one call).
from harness.config import register_configs  # noqa: E402

register_configs()

TIER = "triton_interpret"
TIER_DIR = Path(__file__).parent / TIER


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _tier_requested(config) -> bool:
    """`-m triton_interpret` (not `not triton_interpret`), or a path inside the tier."""
    if re.search(rf"(?<!not ){TIER}", config.option.markexpr or ""):
        return True
    return any(TIER_DIR in Path(str(a).split("::")[0]).resolve().parents
               or Path(str(a).split("::")[0]).resolve() == TIER_DIR for a in config.args)


def pytest_configure(config):
    """The Triton kernel tier runs under the interpreter, which must be on before fla or
    mamba_ssm define their kernels; every other run leaves the environment alone and the
    tier out (``make test`` runs it as its own pytest call)."""
    if not _tier_requested(config) or os.environ.get("TRITON_INTERPRET") == "1":
        return
    early = [m for m in ("fla", "mamba_ssm") if m in sys.modules]
    if early:
        raise pytest.UsageError(f"{early} were imported before the {TIER} tier could set "
                                f"TRITON_INTERPRET=1; run it as `TRITON_INTERPRET=1 pytest -m {TIER}`")
    os.environ["TRITON_INTERPRET"] = "1"


def pytest_collection_modifyitems(config, items):
    if os.environ.get("TRITON_INTERPRET") != "1":  # the tier only runs under the interpreter
        tier = [item for item in items if item.get_closest_marker(TIER) is not None]
        if tier:
            config.hook.pytest_deselected(items=tier)
            items[:] = [item for item in items if item.get_closest_marker(TIER) is None]
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
