"""Conformance of encoder-decoder models (a ``separator`` attribute: archs/seq2seq).

Such a model reads source SEP target in one sequence, so every check runs on it through
``SeparatorAt``: whatever tokens a check draws, column ``SEPARATOR_COLUMN`` holds the
separator and no other column does. Over that layout the model is a causal LM (source
positions predict nothing, each target position sees the source and the target before
it), so causality, batch independence, step == forward, prefill == forward (a chunk that
holds the separator included), gradients, learning and the long checks apply unchanged.
The state-size check is replaced by ``check_seq2seq_state``: declared == reported <= the
tensors held, before and after the separator, and the cross-attention caches are computed
once at the separator and never again.
"""
from __future__ import annotations

import torch
from torch import nn

from harness.conformance._common import BATCH, ConformanceError, tiles_of, tokens
from harness.conformance.short import measured_state_bytes

# Inside the short checks' 21 tokens and before their 13-token prefill split, so a step
# passes the separator and a prefill chunk holds it; the source is 11 tokens at any length.
SEPARATOR_COLUMN = 11


class SeparatorAt(nn.Module):
    """``model`` (an encoder-decoder) fed tokens whose column ``column`` is its separator."""

    def __init__(self, model: nn.Module, column: int = SEPARATOR_COLUMN):
        super().__init__()
        self.model, self.column = model, column

    def _layout(self, tokens: torch.Tensor, first_pos: int) -> torch.Tensor:
        """A (B, n) chunk starting at ``first_pos``: any separator id moved to another id,
        then the separator written at ``column`` if the chunk covers it."""
        sep = self.model.separator
        out = torch.where(tokens == sep, (sep + 1) % self.model.cfg.vocab_size, tokens)
        if first_pos <= self.column < first_pos + tokens.shape[1]:
            out[:, self.column - first_pos] = sep
        return out

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(self._layout(tokens, 0))

    def init_state(self, batch_size: int, device=None, dtype=None):
        return self.model.init_state(batch_size, device, dtype)

    def prefill(self, tokens: torch.Tensor, state):
        return self.model.prefill(self._layout(tokens, state.pos), state)

    def step(self, tokens_t: torch.Tensor, state):
        return self.model.step(self._layout(tokens_t[:, None], state.pos)[:, 0], state)

    def expected_state_bytes(self, batch_size: int, context_len: int, dtype=None) -> int | None:
        return self.model.expected_state_bytes(batch_size, context_len, dtype, source_len=self.column)

    # what the checks read, as the model has it
    def state_size_bytes(self, state) -> int:
        return self.model.state_size_bytes(state)

    def aux_loss(self):
        return self.model.aux_loss()

    def backends(self, device=None, seq_len=None) -> str:
        return self.model.backends(device, seq_len)

    @property
    def embed(self) -> nn.Module:
        return self.model.embed

    @property
    def mixers(self):
        return self.model.mixers

    @property
    def max_seq_len(self):
        return self.model.max_seq_len


def check_seq2seq_state(model: SeparatorAt, **_) -> str:
    """Declared == reported <= held, == held once the decoder's caches are full; the
    cross-attention caches are the encoder's keys / values, computed once."""
    col, full = model.column, max([32, *tiles_of(model).values()])
    sizes = {}
    with torch.no_grad():
        for n in (col - 2, col + 2, col + full):
            state = model.init_state(BATCH)
            _, state = model.prefill(tokens(length=n), state)
            declared, actual = model.expected_state_bytes(BATCH, n), model.state_size_bytes(state)
            held = measured_state_bytes(state)
            if declared is not None and declared != actual:
                raise ConformanceError(f"declared state size {declared} B != actual {actual} B after {n} "
                                       f"tokens (separator at {col})")
            if actual > held or (n == col + full and actual != held):
                raise ConformanceError(f"state_size_bytes says {actual} B but the state's tensors hold "
                                       f"{held} B after {n} tokens (separator at {col})")
            sizes[n] = actual
        kept = [(c.k, c.v) for c in state.layers[1::2]]
        _, state = model.step(tokens(length=1)[:, 0], state)
        if any(c.k is not k or c.v is not v for c, (k, v) in zip(state.layers[1::2], kept)):
            raise ConformanceError("a decode step recomputed the cross-attention cache; the encoder's "
                                   "keys and values are computed once, at the separator")
    return (f"state bytes {sizes[col - 2]} (source held) -> {sizes[col + 2]} -> {sizes[col + full]}; "
            f"cross-attention caches computed once")
