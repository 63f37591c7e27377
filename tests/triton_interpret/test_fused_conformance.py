"""The conformance suite on the fused backends, under the interpreter, at short lengths that
still cross chunk boundaries: the short checks at 21 and 64 tokens (one and three chunks of
16 plus a part) and the long checks (causality by gradients and by perturbation at and
around every tile boundary, steps and uneven prefills == forward) at 40 tokens instead of
1K-4K."""
from __future__ import annotations

import pytest

from harness.conformance import CHECKS, assert_conformance

pytestmark = pytest.mark.triton_interpret

# Left out, as the tier checks them more strictly elsewhere (each costs seconds here):
# learns (30 training steps; test_models.py trains the fused models and compares every
# step with chunked), gradients (test_mixers.py compares every parameter's gradient with
# ref), step / prefill == forward at 21 tokens (long_decode does both across the tiles at
# 40, test_mixers.py against ref) and train == eval (no dropout: the same kernels).
COVERED_ELSEWHERE = ("learns", "gradients", "step_matches_forward", "prefill_matches_forward", "train_eval")
FUSED_CHECKS = [c for c in CHECKS if c not in COVERED_ELSEWHERE]
LENGTHS = (40,)
# Chunks of 16: the smallest fla's kernels tile by on a GPU (tests/triton_interpret/shims.py); the
# tiny variants' 8 would be refused for them. Head and state dims of 16, as real models have.
ARCHS = {
    "linear_attention": ("linear_attention", dict(n_heads=2, chunk_size=16)),
    "retnet": ("retnet", dict(n_heads=2, chunk_size=16)),
    "mamba2[mamba_ssm]": ("mamba2", dict(d_state=16, headdim=16, chunk_size=16, fused_impl="mamba_ssm")),
    "mamba2[fla]": ("mamba2", dict(d_state=16, headdim=16, chunk_size=16, fused_impl="fla")),
    "mamba[triton]": ("mamba", dict(d_state=16, fused_impl="triton")),
}
# archbench's Triton Mamba-1 scan keeps a state every 64 steps: 70 tokens cross that boundary.
# Its tiled form (fused_impl=triton_tiled) is not run here: the interpreter takes ~10 minutes
# over its parallel scans for these checks; test_mamba_triton_scan.py checks its kernels and
# its mixer (fresh and carried state) against the reference, and pytest -m gpu on a GPU.
LENGTHS_OF = {"mamba[triton]": (70,)}


@pytest.mark.parametrize("label", list(ARCHS))
def test_conformance_on_fused(label, monkeypatch):
    name, overrides = ARCHS[label]
    if name == "mamba":  # on CPU tensors "fused" is the C kernel: here the GPU's route instead
        from archs.mamba import MambaMixer
        monkeypatch.setattr(MambaMixer, "_fused_kernel", staticmethod(lambda device: "fused"))
    # float32 only: the interpreter holds bf16 as raw 16-bit integers (shims.py), and the
    # float64 forward gives NaN there (observed with fla-core 0.6.0)
    assert_conformance(name, checks=FUSED_CHECKS, backends=["fused"], lengths=LENGTHS_OF.get(label, LENGTHS), n_layers=1,
                       dtypes=["float32"], **overrides)
