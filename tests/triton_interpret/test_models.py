"""Whole models on the fused kernels, under the interpreter: trained a few steps and decoded,
equal to the same models on ``chunked`` (the blocked PyTorch form) within fp32 tolerance."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archs import create_arch
from tests.triton_interpret.compare import rel_err

pytestmark = pytest.mark.triton_interpret

VOCAB, BATCH, L, STEPS, PROMPT, NEW = 64, 2, 40, 2, 21, 6
TOL = 1e-4  # after a few SGD steps: float32 errors compounded by the updates
# Chunks of 16 (the smallest fla's kernels tile by on a GPU; see shims.py); 40 tokens
# leave a partial last chunk.
LIN = dict(n_heads=2, chunk_size=16)
SSD = dict(d_state=16, headdim=16, chunk_size=16)
MODELS = {
    "linear_attention": ("linear_attention", LIN),
    "retnet": ("retnet", LIN),
    "mamba2[mamba_ssm]": ("mamba2", dict(SSD, fused_impl="mamba_ssm")),
    "mamba2[fla]": ("mamba2", dict(SSD, fused_impl="fla")),
}


def _build(name: str, backend: str):
    torch.manual_seed(0)
    if name == "hybrid":  # linear attention (gated), Mamba-2 (fla), attention (SDPA): "LDA"
        kw = dict(pattern="LDA", mixer_kwargs={"L": dict(LIN, decay="gated", backend=backend),
                                               "D": dict(SSD, fused_impl="fla", backend=backend)})
        return create_arch("hybrid", vocab_size=VOCAB, d_model=32, **kw)
    arch, kw = MODELS[name]
    # one layer: the interpreter takes seconds per kernel call; the hybrid stacks three
    return create_arch(arch, vocab_size=VOCAB, d_model=32, n_layers=1, backend=backend, **kw)


def _train(model) -> list[float]:
    """STEPS of plain SGD on fixed random batches (SGD: no Adam normalisation to amplify
    float32 noise in near-zero gradients)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    g, losses = torch.Generator().manual_seed(3), []
    model.train()
    for _ in range(STEPS):
        x = torch.randint(0, VOCAB, (BATCH, L + 1), generator=g)
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def _generate(model) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy: prefill a PROMPT-token prompt, then NEW steps. Returns (tokens, logits)."""
    model.eval()
    prompt = torch.randint(0, VOCAB, (BATCH, PROMPT), generator=torch.Generator().manual_seed(4))
    logits, state = model.prefill(prompt, model.init_state(BATCH))
    out, all_logits = [], [logits]
    token = logits[:, -1].argmax(-1)
    for _ in range(NEW):
        out.append(token)
        logits_t, state = model.step(token, state)
        all_logits.append(logits_t[:, None])
        token = logits_t.argmax(-1)
    return torch.stack(out, 1), torch.cat(all_logits, 1)


@pytest.mark.parametrize("name", [*MODELS, "hybrid"])
def test_fused_model_trains_and_decodes_like_chunked(report, name):
    fast, blocked = _build(name, "fused"), _build(name, "chunked")
    assert "fused" in fast.backends() and "fused:" not in blocked.backends().replace("fused+", "")
    loss_fast, loss_blocked = _train(fast), _train(blocked)
    params = max(rel_err(p, q) for p, q in zip(fast.parameters(), blocked.parameters()))
    loss = max(abs(a - b) / b for a, b in zip(loss_fast, loss_blocked))
    (tokens_fast, logits_fast), (tokens_blocked, logits_blocked) = _generate(fast), _generate(blocked)
    dec = rel_err(logits_fast, logits_blocked)
    report(f"{name} model ({fast.backends()}): {STEPS} SGD steps (params) / decode logits", dec, params)
    assert loss < TOL and params < TOL, (loss_fast, loss_blocked, params)
    assert dec < TOL and torch.equal(tokens_fast, tokens_blocked)
    # the models did train: the parameters moved, identically
    assert loss_fast[-1] != loss_fast[0]
