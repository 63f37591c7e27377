"""The fixed-window feed-forward mixer (Bengio et al. 2003) in the LM shell.

``order`` is the n of an n-gram: the mixer reads the last ``order - 1`` inputs (its own
position included) through one hidden layer, y_t = W2 act(W1 [x_{t-n+2}; ...; x_t] + b1).
Nothing before the window reaches the output, so one layer is an n-gram model with learned,
shared representations; stacking layers widens the window to layers x (order - 2) + 1.
The decode state is the ``order - 2`` inputs before the current one: a constant size,
whatever the context length.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from archs.ffn_lm.ref import window_inputs
from archs.mixer import Mixer

ACTIVATIONS = {"tanh": torch.tanh, "gelu": F.gelu, "relu": F.relu}


@dataclass
class FFNLMConfig:
    d_model: int
    order: int = 5                 # n: predict the next token from the last n - 1 inputs
    hidden: int | None = None      # hidden width; None = 4 * d_model
    activation: str = "tanh"       # Bengio et al. 2003 used tanh
    bias: bool = True              # the paper's hidden layer has biases

    def __post_init__(self) -> None:
        if isinstance(self.order, bool) or not isinstance(self.order, int) or self.order < 2:
            raise ValueError(f"order must be an integer >= 2 (n of the n-gram: the window is the "
                             f"last n - 1 inputs), got {self.order!r}")
        if self.hidden is not None and self.hidden <= 0:
            raise ValueError(f"hidden must be positive or None (= 4 * d_model), got {self.hidden}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {list(ACTIVATIONS)}")

    @property
    def window(self) -> int:
        return self.order - 1


class FFNMixer(Mixer):
    backends = ("ref",)
    state_growth = "constant"
    config_class = FFNLMConfig
    # Any (B, order - 2, D) tensor is a valid past, and prefill is differentiable.
    accepts_initial_state = True

    def __init__(self, cfg: FFNLMConfig):
        super().__init__()
        self.cfg = cfg
        hidden = cfg.hidden or 4 * cfg.d_model
        self.up = nn.Linear(cfg.window * cfg.d_model, hidden, bias=cfg.bias)
        self.down = nn.Linear(hidden, cfg.d_model, bias=cfg.bias)
        self.act = ACTIVATIONS[cfg.activation]

    def _mix(self, x: torch.Tensor, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D) after ``history`` -> outputs (B, L, D) and the new history."""
        y = self.down(self.act(self.up(window_inputs(x, history))))
        keep = self.cfg.window - 1
        full = torch.cat([history.to(x.dtype), x], dim=1)
        return y, full[:, full.shape[1] - keep:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, self.init_state(x.shape[0], x.device, x.dtype)["history"])[0]

    def init_state(self, batch_size, device=None, dtype=None) -> dict:
        # zeros: a sequence's first positions see zero vectors where earlier inputs would be
        shape = (batch_size, self.cfg.window - 1, self.cfg.d_model)
        return {"history": torch.zeros(shape, device=device or self.param_device, dtype=dtype or self.param_dtype)}

    def prefill(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        y, history = self._mix(x, state["history"])
        return y, {"history": history}

    def step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        y, state = self.prefill(x_t[:, None], state)
        return y[:, 0], state

    def tiles(self) -> dict[str, int]:
        return {"window": self.cfg.window}

    def sequence_flops(self, batch_size: int, seq_len: int) -> int:
        return 0  # the concatenation moves data only; both matmuls are nn.Linear (counted by the shell)

    def expected_state_bytes(self, batch_size, context_len, dtype) -> int:
        size = torch.empty((), dtype=dtype).element_size()
        return batch_size * (self.cfg.window - 1) * self.cfg.d_model * size
