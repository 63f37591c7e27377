"""Fake architectures for harness tests."""
import torch

from archs.mixer import Mixer
from archs.model import LMConfig, build_lm


class FailingMixer(Mixer):
    """Linear mixer that raises ``kind`` for sequences of ``fail_at`` tokens or more and,
    in eval mode, an OOM for calls of more than ``max_eval_tokens`` (batch x length)."""

    def __init__(self, fail_at: int, kind: str, max_eval_tokens: int | None = None):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)
        self.fail_at, self.kind, self.max_eval_tokens = fail_at, kind, max_eval_tokens

    def forward(self, x):
        if not self.training and self.max_eval_tokens and x.shape[0] * x.shape[1] > self.max_eval_tokens:
            raise torch.OutOfMemoryError(f"simulated: {x.shape[0]}x{x.shape[1]} tokens do not fit")
        if x.shape[1] >= self.fail_at:
            if self.kind == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB (simulated)")
            raise RuntimeError("simulated kernel failure")
        return self.proj(x)

    def init_state(self, batch_size, device=None, dtype=None):
        return {}

    def step(self, x_t, state):
        return self.proj(x_t), state


def failing(vocab_size=16, d_model=4, n_layers=1, *, fail_at=64, kind="oom", max_eval_tokens=None, **shell):
    return build_lm(LMConfig(vocab_size, d_model, n_layers, **shell),
                    lambda i: FailingMixer(fail_at, kind, max_eval_tokens))


