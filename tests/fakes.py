"""Fake architectures for harness tests."""
import torch

from archs.mixer import Mixer
from archs.model import LMConfig, build_lm


class FailingMixer(Mixer):
    """Identity mixer that raises ``exc`` for sequences of ``fail_at`` tokens or more."""

    def __init__(self, fail_at: int, kind: str):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)
        self.fail_at, self.kind = fail_at, kind

    def forward(self, x):
        if x.shape[1] >= self.fail_at:
            if self.kind == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB (simulated)")
            raise RuntimeError("simulated kernel failure")
        return self.proj(x)

    def init_state(self, batch_size, device=None, dtype=None):
        return {}

    def step(self, x_t, state):
        return self.proj(x_t), state


def failing(vocab_size=16, d_model=4, n_layers=1, *, fail_at=64, kind="oom", **shell):
    return build_lm(LMConfig(vocab_size, d_model, n_layers, **shell), lambda i: FailingMixer(fail_at, kind))


