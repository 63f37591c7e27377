"""minGRU (Feng et al. 2024): h_t = (1 - z_t) * h_{t-1} + z_t * g(W_h x_t), z_t = sigmoid(W_z x_t).

Gates depend only on the input, so the recurrence is linear in h and trains in parallel.
With g(.) > 0 every term is positive, so the scan runs in log space (a cumulative sum of
log-gates plus a logcumsumexp), which stays finite at any length.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archs import LanguageModel, LMConfig, Mixer, build_lm
from archs.precision import up


def positive(x: torch.Tensor) -> torch.Tensor:
    """g(x) = x + 0.5 for x >= 0, sigmoid(x) otherwise: continuous and strictly positive."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_positive(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


# The log-space scan's cumulative sums grow with the length, and float32 loses ~1e-4 of
# the output by 4K tokens; restarting them every CHUNK tokens (carrying h) keeps the error
# at float32 rounding. The conformance suite tests both sides of this declared tile.
CHUNK = 256


class MinGRU(Mixer):
    # One backend (archs.backends' "ref": the log-space parallel scan in plain PyTorch);
    # resolved_backend() reports it in every result row without being told.
    backends = ("ref",)
    state_growth = "constant"

    def __init__(self, d_model: int, expand: int = 1):
        super().__init__()
        if expand <= 0:
            raise ValueError(f"expand must be positive, got {expand}")
        self.d_hidden = expand * d_model
        self.in_proj = nn.Linear(d_model, 2 * self.d_hidden, bias=False)  # -> gate z, candidate h
        self.out_proj = nn.Linear(self.d_hidden, d_model, bias=False)

    def _scan(self, x: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
        """(B, L, D) -> hidden states (B, L, Dh), starting from h0 (B, Dh) or zeros."""
        # at least float32 (a bfloat16 model), float64 kept (archs/precision.py)
        k, h_raw = up(self.in_proj(x)).chunk(2, dim=-1)
        log_z = -F.softplus(-k)           # log sigmoid(k)
        log_keep = -F.softplus(k)         # log (1 - sigmoid(k))
        log_b = log_z + log_positive(h_raw)
        if h0 is not None:                # the carried state enters as a term at t = 0
            log_b = torch.cat([torch.log(h0.to(log_b.dtype).clamp_min(1e-30))[:, None], log_b], dim=1)
            log_keep = F.pad(log_keep, (0, 0, 1, 0))
        log_a_star = torch.cumsum(log_keep, dim=1)  # (B, L[+1], Dh)
        h = torch.exp(log_a_star + torch.logcumsumexp(log_b - log_a_star, dim=1))
        return h[:, 1:] if h0 is not None else h

    def _chunked_scan(self, x: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        """(B, L, D) -> hidden states (B, L, Dh), CHUNK tokens at a time."""
        hs = []
        for start in range(0, x.shape[1], CHUNK):
            hs.append(self._scan(x[:, start:start + CHUNK], h))
            h = hs[-1][:, -1]
        return torch.cat(hs, dim=1)

    def tiles(self) -> dict[str, int]:
        return {"scan_chunk": CHUNK}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self._chunked_scan(x, None).to(x.dtype))

    def init_state(self, batch_size, device=None, dtype=None) -> dict:
        dtype = torch.promote_types(dtype or self.param_dtype, torch.float32)  # float32, or float64 kept
        return {"h": torch.zeros(batch_size, self.d_hidden, device=device or self.param_device, dtype=dtype)}

    def prefill(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        h = self._chunked_scan(x, state["h"])
        return self.out_proj(h.to(x.dtype)), {"h": h[:, -1]}

    def step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        k, h_raw = up(self.in_proj(x_t)).chunk(2, dim=-1)
        z = torch.sigmoid(k)
        h = (1 - z) * state["h"] + z * positive(h_raw)
        return self.out_proj(h.to(x_t.dtype)), {"h": h}

    def expected_state_bytes(self, batch_size, context_len, dtype) -> int:
        # the hidden state in float32 (float64 for a float64 model), whatever the length
        return batch_size * self.d_hidden * torch.promote_types(dtype, torch.float32).itemsize


def mingru(vocab_size: int = 256, d_model: int = 128, n_layers: int = 2, *, expand: int = 1,
           **shell) -> LanguageModel:
    """minGRU language model: the LM shell with a minGRU mixer and a SwiGLU MLP per layer."""
    cfg = LMConfig(vocab_size, d_model, n_layers, **shell)
    return build_lm(cfg, lambda i: MinGRU(d_model, expand))
