"""The fused Triton kernels at the precision users get on an NVIDIA GPU: TF32 dots.

Triton's ``tl.dot`` on fp32 operands runs at TF32 on NVIDIA GPUs unless a kernel names a
precision; fla's chunked linear attention and mamba_ssm's SSD kernels do not. The GPU tests
beside each family compile them at full fp32 (tests/conftest.py sets
``TRITON_F32_DEFAULT=ieee``) and hold them to fp32 tolerances. This file checks the other
side: in a fresh process at ``TRITON_F32_DEFAULT=tf32`` the kernels stay within a relative
RMS error that TF32's rounding explains (and that the CPU emulation below grounds), and that
error is really there - so the knob is what separates the two runs.

    python tests/archs/test_fused_tf32.py [GROUP ...]   # prints {case: relative RMS error} as JSON
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from archs.linear_attention import fused as la_fused  # noqa: E402
from archs.linear_attention.chunked import linear_attn_chunked  # noqa: E402
from archs.mamba2 import fused as ssd_fused_mod  # noqa: E402
from archs.mamba2.chunked import ssd_chunked  # noqa: E402
from tests.archs.linear_attention.test_linear_attention_ref import DECAYS  # noqa: E402
from tests.archs.linear_attention.test_linear_attention_ref import _inputs as la_inputs  # noqa: E402
from tests.archs.mamba2.test_mamba2_ref import _inputs as ssd_inputs  # noqa: E402

# TF32 keeps 10 of fp32's 23 mantissa bits (unit roundoff 2^-11 ~ 4.9e-4). Rounding only the
# inputs gives these cases a relative RMS error of 2-3e-4 (test_tf32_bound_is_grounded); the
# kernels also round intermediates (chunk states fed to the next dot), which the H200 run
# showed adds 2-3x at most on the max error. The bound leaves room for that and no more: a
# wrong decay or chunk boundary is off by 1e-2 or more.
TF32_REL_RMS = 3e-3
IEEE_REL_RMS = 1e-5  # below this, the "tf32" run did not use TF32 at all
LENGTH = 200


def rel_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double().cpu(), expected.double().cpu()
    return ((actual - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt()).item()


def round_to_tf32(t: torch.Tensor | None) -> torch.Tensor | None:
    """fp32 -> the nearest value with a 10-bit mantissa (ties away from zero), as fp32."""
    if t is None:
        return None
    bits = t.float().contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


GROUPS = [f"linear_attention-{decay}-{norm}" for norm in ("normalized", "raw") for decay in DECAYS] + ["ssd"]


def _cases(device: str, rounding=lambda t: t, groups=GROUPS):
    """(name, fast output, reference output) for each case of ``groups``; ``fast`` runs on
    ``device`` ("cpu": the reference on inputs passed through ``rounding``)."""
    out = []
    for group in groups:
        if group == "ssd":
            x, dt, A, B, C, D, s0 = ssd_inputs(LENGTH)
            y_ref, s_ref = ssd_chunked(*(t.double() for t in (x, dt, A, B, C, D, s0)), True, chunk_size=64)
            if device == "cpu":
                y, s = ssd_chunked(rounding(x), dt, A, rounding(B), rounding(C), D, rounding(s0), True,
                                   chunk_size=64)
            else:
                y, s = ssd_fused_mod.ssd_fused(*(t.cuda() for t in (x, dt, A, B, C, D, s0)), True, chunk_size=64)
            out += [("ssd.output", y, y_ref), ("ssd.state", s, s_ref)]
            continue
        _, decay, norm = group.split("-")
        normalize = norm == "normalized"
        (q, k, v, ld), s0 = la_inputs(LENGTH, decay, normalize)
        o_ref, s_ref = linear_attn_chunked(*(None if t is None else t.double() for t in (q, k, v, ld, s0)),
                                           True, normalize=normalize)
        if device == "cpu":
            o, s = linear_attn_chunked(*(rounding(t) for t in (q, k, v)), ld, rounding(s0), True,
                                       normalize=normalize)
        else:
            o, s = la_fused.linear_attn_fused(*(t if t is None else t.cuda() for t in (q, k, v, ld, s0)),
                                              True, normalize=normalize)
        out += [(group + ".output", o, o_ref), (group + ".state", s, s_ref)]
    return out


def measure(device: str, groups=GROUPS) -> dict[str, float]:
    return {name: rel_rms(fast, ref) for name, fast, ref in _cases(device, groups=groups)}


def test_tf32_bound_is_grounded():
    """Rounding the inputs to TF32 (CPU emulation) leaves an error well inside the bound,
    and well above fp32's: the bound is neither vacuous nor tight enough to flake."""
    errors = {name: rel_rms(fast, ref) for name, fast, ref in _cases("cpu", round_to_tf32)}
    exact = {name: rel_rms(fast, ref) for name, fast, ref in _cases("cpu")}
    assert max(errors.values()) <= TF32_REL_RMS / 4, errors
    assert min(errors.values()) > 2 * IEEE_REL_RMS, errors  # measured: >= 5e-5
    assert max(exact.values()) < IEEE_REL_RMS / 10, exact   # measured: 2e-7


def test_round_to_tf32_keeps_ten_mantissa_bits():
    x = torch.tensor([1.0, 1 + 2**-10, 1 + 2**-11, 1 + 2**-12, -3.0000002])
    r = round_to_tf32(x)
    assert r.tolist() == [1.0, 1 + 2**-10, 1 + 2**-10, 1.0, -3.0]


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and la_fused.fla_available()
                         and ssd_fused_mod.fused_available()),
                    reason="needs CUDA, flash-linear-attention and mamba_ssm")
def test_fused_kernels_at_tf32_within_its_rounding(tmp_path):
    """Fresh processes (the knob is read when a kernel is traced, and traced kernels are
    cached in memory and on disk: hence a cache folder of their own) at the GPU's default,
    one per group of cases, side by side: each compiles its own kernels (~1 min on an H200's
    host), which one process would do one after another."""
    env = dict(os.environ, TRITON_F32_DEFAULT="tf32", TRITON_CACHE_DIR=str(tmp_path / "triton"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    procs = {g: subprocess.Popen([sys.executable, __file__, g], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for g in GROUPS}
    errors = {}
    try:
        for group, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=600)
            assert proc.returncode == 0, f"{group}: {stderr[-4000:]}"
            errors.update(json.loads(stdout.strip().splitlines()[-1]))
    finally:  # one failing group must not leave the others compiling
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    print("relative RMS error at TF32:", errors)
    over = {name: e for name, e in errors.items() if not e <= TF32_REL_RMS}
    assert not over, f"over the TF32 bound {TF32_REL_RMS}: {over}"
    for family in ("linear_attention", "ssd"):  # each library's kernels must show TF32 rounding
        worst = max(e for name, e in errors.items() if name.startswith(family))
        assert worst > IEEE_REL_RMS, f"{family}: no TF32 rounding seen - was the knob honoured? {errors}"


if __name__ == "__main__":  # [GROUP ...]: prints {case: relative RMS error} as JSON
    print(json.dumps(measure("cuda" if torch.cuda.is_available() else "cpu", sys.argv[1:] or GROUPS)))
