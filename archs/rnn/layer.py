"""An LSTM mixer (Hochreiter & Schmidhuber 1997) on torch.nn.LSTM.

The same torch kernel serves all three forms: the whole sequence (forward), a chunk
continuing from (h, c) (prefill), and one token (step) - so they agree by construction,
and the state is two vectors per layer whatever the context length.
"""
from __future__ import annotations

import torch
from torch import nn

from archs.backends import check_backend
from archs.mixer import Mixer
from archs.model import LanguageModel, LMConfig, build_lm


class LSTMMixer(Mixer):
    # torch.nn.LSTM is torch's own fused kernel (cuDNN on a GPU, ATen's on the CPU): the
    # one backend there is, so "auto" and "fused" are the same path on every device.
    backends = ("fused", "auto")
    state_growth = "constant"
    accepts_initial_state = True  # a fixed-size state; prefill is differentiable
    bidirectional = "two_pass"  # model.causal=false: a forward and a reversed copy, added

    def __init__(self, d_model: int, hidden_size: int | None = None, backend: str = "auto"):
        super().__init__()
        check_backend(backend, self.backends, "LSTM")
        hidden_size = hidden_size or d_model
        if hidden_size <= 0:
            raise ValueError(f"hidden_size must be positive, got {hidden_size}")
        self.hidden_size = hidden_size
        self.lstm = nn.LSTM(d_model, hidden_size, batch_first=True)
        # A wider recurrent state than the residual stream needs a projection back.
        self.out_proj = nn.Linear(hidden_size, d_model, bias=False) if hidden_size != d_model else nn.Identity()

    def resolved_backend(self, device=None, seq_len=None) -> str:
        return "fused"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.lstm(x)[0])

    def init_state(self, batch_size, device=None, dtype=None) -> dict:
        zeros = torch.zeros(1, batch_size, self.hidden_size, device=device or self.param_device,
                            dtype=dtype or self.param_dtype)
        return {"h": zeros, "c": zeros.clone()}

    def prefill(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        y, (h, c) = self.lstm(x, (state["h"], state["c"]))
        return self.out_proj(y), {"h": h, "c": c}

    def step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        y, state = self.prefill(x_t[:, None], state)
        return y[:, 0], state

    def sequence_flops(self, batch_size: int, seq_len: int) -> int:
        # torch.nn.LSTM holds its own matrices (not nn.Linear): four gates, each an input
        # and a recurrent matmul, per token; gate nonlinearities are left out.
        d_in = self.lstm.input_size
        return 2 * 4 * self.hidden_size * (d_in + self.hidden_size) * batch_size * seq_len

    def expected_state_bytes(self, batch_size, context_len, dtype) -> int:
        return 2 * batch_size * self.hidden_size * torch.empty((), dtype=dtype).element_size()


def lstm(vocab_size: int = 256, d_model: int = 128, n_layers: int = 2, *,
         hidden_size: int | None = None, backend: str = "auto", **shell) -> LanguageModel:
    """LSTM language model: the shared LM shell with an LSTM mixer in every block."""
    cfg = LMConfig(vocab_size, d_model, n_layers, **shell)
    return build_lm(cfg, lambda i: LSTMMixer(d_model, hidden_size, backend))
