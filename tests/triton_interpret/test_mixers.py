"""Each fused mixer, whole, against its ``ref`` backend under the interpreter: forward,
the gradient of every parameter, and decoding (two chained prefills, then steps)."""
from __future__ import annotations

import pytest
import torch

from archs.linear_attention import LinearAttentionConfig, LinearAttentionMixer
from archs.mamba2 import Mamba2Config, Mamba2Mixer
from tests.triton_interpret.compare import BWD_TOL, FWD_TOL, rel_err

pytestmark = pytest.mark.triton_interpret

D_MODEL, BATCH, L, SPLITS = 32, 2, 40, (17, 30)  # 40 = 2 chunks of 16 + 8; prefills end mid-chunk
# chunks of 16: the smallest fla's kernels tile by on a GPU (tests/triton_interpret/shims.py)
MIXERS = {
    "linear_attention": (LinearAttentionMixer, LinearAttentionConfig, dict(n_heads=2)),
    "retnet": (LinearAttentionMixer, LinearAttentionConfig,
               dict(n_heads=2, feature_map="identity", decay="fixed", normalize=False)),
    "gla": (LinearAttentionMixer, LinearAttentionConfig, dict(n_heads=2, decay="gated")),
    "mamba2[mamba_ssm]": (Mamba2Mixer, Mamba2Config, dict(d_state=16, headdim=16, fused_impl="mamba_ssm")),
    "mamba2[fla]": (Mamba2Mixer, Mamba2Config, dict(d_state=16, headdim=16, ngroups=2, fused_impl="fla")),
}


def _mixer(name: str, backend: str):
    cls, config, kw = MIXERS[name]
    torch.manual_seed(0)
    return cls(config(D_MODEL, chunk_size=16, backend=backend, **kw))


def _decode(m, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Prefill x[:, :17], prefill x[:, 17:30] from that state, then step to the end."""
    state, outs = m.init_state(x.shape[0]), []
    for lo, hi in zip((0, *SPLITS[:-1]), SPLITS):
        y, state = m.prefill(x[:, lo:hi], state)
        outs.append(y)
    for t in range(SPLITS[-1], x.shape[1]):
        y, state = m.step(x[:, t], state)
        outs.append(y[:, None])
    return torch.cat(outs, dim=1), state


@pytest.mark.parametrize("name", list(MIXERS))
def test_fused_mixer_matches_ref(report, name):
    fast, ref = _mixer(name, "fused"), _mixer(name, "ref")
    assert fast.resolved_backend().startswith("fused") and ref.resolved_backend() == "ref"
    if name.startswith("mamba2"):  # the Triton route (shim 8), not the C kernel of a CPU
        assert fast.resolved_backend().startswith(f"fused:{name[7:-1]}/"), fast.resolved_backend()
    x = torch.randn(BATCH, L, D_MODEL, generator=torch.Generator().manual_seed(1))
    w = torch.randn(BATCH, L, D_MODEL, generator=torch.Generator().manual_seed(2))
    y_fast, y_ref = fast(x), ref(x)
    fwd = rel_err(y_fast, y_ref)
    (y_fast * w).sum().backward()
    (y_ref * w).sum().backward()
    grads = {n: rel_err(p.grad, dict(ref.named_parameters())[n].grad) for n, p in fast.named_parameters()}
    bwd = max(grads.values())
    report(f"{name} mixer ({fast.resolved_backend()}): forward / params' grads", fwd, bwd)
    assert fwd < FWD_TOL and bwd < BWD_TOL, (fwd, grads)
    with torch.no_grad():
        (y_dec, s_fast), (_, s_ref) = _decode(fast, x), _decode(ref, x)
    dec = max(rel_err(y_dec, y_ref), *(rel_err(s_fast[k], s_ref[k]) for k in s_ref))
    report(f"{name} mixer: 2 prefills + 10 steps vs ref forward, final states", dec)
    assert dec < FWD_TOL, dec
