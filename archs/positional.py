"""Positional encodings.

Absolute encodings (sinusoidal, learned) are added to the token embeddings by the LM
shell; relative ones (rope, alibi) act inside attention on queries/keys or on the scores.
``none`` (NoPE) relies on the causal mask alone. Every encoding takes explicit integer
positions, so decoding at position t and a parallel pass agree by construction.
"""
from __future__ import annotations

import math

import torch
from torch import nn

ABSOLUTE = ("sinusoidal", "learned")
RELATIVE = ("rope", "alibi")
POSITIONAL_ENCODINGS = ("none", *ABSOLUTE, *RELATIVE)


class SequenceTooLongError(ValueError):
    """A position beyond what the model can represent (e.g. past a learned table)."""


def check_positional(name: str) -> str:
    if name not in POSITIONAL_ENCODINGS:
        raise ValueError(f"unknown pos_encoding {name!r}; choose one of {list(POSITIONAL_ENCODINGS)}")
    return name


# --- absolute -----------------------------------------------------------------------------

def sinusoidal_table(positions: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Vaswani et al. 2017: even dims sin(pos / base^(2j/d)), odd dims cos(same). (L,) -> (L, dim)."""
    j = torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32)
    angles = positions.float()[:, None] / base ** (j / dim)[None, :]  # (L, ceil(dim/2))
    table = torch.zeros(positions.shape[0], dim, device=positions.device)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return table


class SinusoidalPositions(nn.Module):
    """Fixed, unbounded: computed for whatever positions are asked, times ``scale``.

    The raw table has per-dimension RMS 1/sqrt(2). Vaswani et al. scale the token
    embeddings up by sqrt(d) so that tokens and positions enter at the same magnitude; we
    keep the GPT-2 token initialisation and scale the table down instead (the LM passes
    ``scale = embed_std * sqrt(2)``, so both have RMS ``embed_std``). Unscaled, positions
    outweigh tokens ~35:1 at the usual std of 0.02 and a small model barely learns.
    """

    def __init__(self, dim: int, base: float = 10000.0, scale: float = 1.0):
        super().__init__()
        self.dim, self.base, self.scale = dim, base, scale

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.scale * sinusoidal_table(positions, self.dim, self.base)


class LearnedPositions(nn.Module):
    """A trained table of ``max_seq_len`` rows; positions past it are an error, not a crash."""

    def __init__(self, dim: int, max_seq_len: int, std: float = 0.02):
        super().__init__()
        if max_seq_len is None or max_seq_len <= 0:
            raise ValueError("pos_encoding='learned' needs a positive max_seq_len (the table size)")
        self.max_seq_len = max_seq_len
        self.table = nn.Embedding(max_seq_len, dim)
        nn.init.normal_(self.table.weight, std=std)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        last = int(positions.max()) if positions.numel() else -1
        if last >= self.max_seq_len:
            raise SequenceTooLongError(
                f"position {last} is beyond the learned position table (max_seq_len="
                f"{self.max_seq_len}); learned absolute positions cannot extrapolate. Evaluate at "
                f"<= {self.max_seq_len} tokens or build the model with a larger max_seq_len.")
        return self.table(positions)


def absolute_positions(name: str, dim: int, max_seq_len: int | None,
                       embed_std: float = 0.02) -> nn.Module | None:
    """The module the LM adds to its token embeddings, at the token table's scale."""
    if name == "sinusoidal":
        return SinusoidalPositions(dim, scale=embed_std * math.sqrt(2))
    if name == "learned":
        return LearnedPositions(dim, max_seq_len, std=embed_std)
    return None


# --- rotary -------------------------------------------------------------------------------

class RotaryEmbedding(nn.Module):
    """RoPE (Su et al. 2021), half-split layout: rotate (x[:d/2], x[d/2:]) pairs by pos·θ_j.

    q·k after rotation depends on positions only through their difference.
    """

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rope needs an even head dimension, got {head_dim}; "
                             f"choose d_model / n_heads even")
        self.head_dim, self.base = head_dim, base
        self.register_buffer("inv_freq", self._inv_freq(torch.float32), persistent=False)

    def _inv_freq(self, dtype: torch.dtype) -> torch.Tensor:
        return self.base ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim).to(dtype)

    def _apply(self, fn, recurse=True):
        # as for ALiBi's slopes: model.to(bf16) must not round the frequencies (a bf16
        # frequency is off by 2^-9 relative, i.e. by up to 16 radians at position 8K)
        super()._apply(fn, recurse)
        dtype = torch.float64 if self.inv_freq.dtype == torch.float64 else torch.float32
        self.inv_freq = self._inv_freq(dtype).to(self.inv_freq.device)
        return self

    def tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the angles (L, Dh/2) at ``positions`` (L,), in ``dtype``: what
        forward() rotates by (and the CPU attention kernel, which rotates inside)."""
        angles = positions.to(dtype)[:, None] * self.inv_freq.to(dtype)[None, :]
        return angles.cos(), angles.sin()

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: (B, H, L, Dh), positions: (L,) -> rotated x, same shape and dtype; computed in
        float32 (float64 for float64 x)."""
        acc = torch.promote_types(x.dtype, torch.float32)
        cos, sin = self.tables(positions, acc)
        # (x1 cos - x2 sin, x1 sin + x2 cos) as x * [cos, cos] + [x2, x1] * [-sin, sin]: the same
        # numbers (negation is exact) in four whole-tensor ops instead of seven
        xa = x.to(acc)
        half = x.shape[-1] // 2
        swapped = torch.cat([xa[..., half:], xa[..., :half]], dim=-1)
        out = xa * torch.cat([cos, cos], dim=-1) + swapped * torch.cat([-sin, sin], dim=-1)
        return out.to(x.dtype)


# --- ALiBi --------------------------------------------------------------------------------

def alibi_slopes(n_heads: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Press et al. 2022: geometric slopes 2^(-8/n), 2^(-16/n), ...; for a head count that
    is not a power of two, the closest lower power's slopes plus every other slope of
    the next power (as in the paper's reference code). Computed in Python floats, then
    rounded once to ``dtype`` (float32, or float64 for float64 models)."""
    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if n_heads <= 0:
        raise ValueError(f"n_heads must be positive, got {n_heads}")
    if math.log2(n_heads).is_integer():
        return torch.tensor(power_of_two(n_heads), dtype=dtype)
    lower = 2 ** math.floor(math.log2(n_heads))
    extra = power_of_two(2 * lower)[0::2][: n_heads - lower]
    return torch.tensor(power_of_two(lower) + extra, dtype=dtype)


class ALiBi(nn.Module):
    """Adds -slope_h · (i - j) to the score of query i on key j.

    The bias is never computed in a 16-bit dtype: at distance 8191 it is ~4096, where a
    bf16 step is 16. The slopes stay float32 through ``model.to(bf16)`` (float64 after
    ``model.double()``), and the bias is float32/float64 for the scores to add.
    """

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.register_buffer("slopes", alibi_slopes(n_heads), persistent=False)

    def _apply(self, fn, recurse=True):
        # .to(dtype) / .half() / .cuda() all come through here: let them move the buffer,
        # then recompute it exactly at float32 (or float64) precision on its new device.
        super()._apply(fn, recurse)
        dtype = torch.float64 if self.slopes.dtype == torch.float64 else torch.float32
        self.slopes = alibi_slopes(self.n_heads, dtype).to(self.slopes.device)
        return self

    def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
        """(Lq,), (Lk,) -> bias (H, Lq, Lk) in the slopes' dtype (float32 or float64).
        ``symmetric``: -slope * |i - j| (a bidirectional model's keys lie on both sides)."""
        distance = (q_pos[:, None] - k_pos[None, :]).to(self.slopes.dtype)  # (Lq, Lk)
        if symmetric:
            distance = distance.abs()
        return -self.slopes[:, None, None] * distance[None]
