"""One LM shell for every architecture: embed -> N x Block(mixer, mlp) -> norm -> head.

An architecture contributes only its mixers (one per layer; a hybrid simply passes
different mixers at different depths). The shell owns absolute positional encodings,
the decode loop's position counter, and the bookkeeping the harness reads
(parameter count, state size, backends, auxiliary losses).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from archs.bidirectional import (DECODE_HINT, BidirectionalDecodeError, check_causal_layers,
                                 make_bidirectional)
from archs.blocks import MLPS, NORM_POSITIONS, NORMS, MLP, Block, make_norm
from archs.mixer import Mixer, State
from archs.positional import (ABSOLUTE, SequenceTooLongError, absolute_positions,
                              check_positional)


@dataclass
class LMConfig:
    vocab_size: int = 256          # bytes: the default text task is byte-level
    d_model: int = 128
    n_layers: int = 2
    norm: str = "rmsnorm"          # RMSNorm is what current LMs (Llama, Mamba) use
    mlp: str = "swiglu"            # "none" for Mamba-style blocks whose mixer is the whole block
    mlp_ratio: float = 4.0         # hidden width / d_model (SwiGLU takes 2/3 of it, same params)
    pos_encoding: str = "none"     # absolute ones are applied here, relative ones in attention
    max_seq_len: int | None = None  # the learned table's size; None = unbounded
    tie_embeddings: bool = True    # halves embedding params for tiny vocabularies' models
    embed_std: float = 0.02        # GPT-2 initialisation of the token table
    norm_position: str = "pre"     # pre (GPT-2; trains without warm-up) | post (the original Transformer)
    causal: bool = True            # False: bidirectional (encoder-only, archs/bidirectional.py)

    def __post_init__(self) -> None:
        for key in ("vocab_size", "d_model", "n_layers"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {list(NORMS)}")
        if self.mlp not in MLPS:
            raise ValueError(f"unknown mlp {self.mlp!r}; choose one of {list(MLPS)}")
        if self.norm_position not in NORM_POSITIONS:
            raise ValueError(f"unknown norm_position {self.norm_position!r}; choose one of {list(NORM_POSITIONS)}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        check_positional(self.pos_encoding)
        if self.pos_encoding == "learned" and not self.max_seq_len:
            raise ValueError("pos_encoding='learned' needs max_seq_len (the size of its table)")
        if not isinstance(self.causal, bool):
            raise ValueError(f"causal must be true or false, got {self.causal!r}")


def add_positions(h: torch.Tensor, positions: nn.Module | None, first_pos: int) -> torch.Tensor:
    """Token embeddings (B, n, D) from position ``first_pos`` on, or (B, D) for one token,
    plus the absolute positional encoding (``positions``; None adds nothing)."""
    if positions is None:
        return h
    n = h.shape[1] if h.dim() > 2 else 1
    pos = torch.arange(first_pos, first_pos + n, device=h.device)
    return h + positions(pos).to(h.dtype).reshape((n, -1) if h.dim() > 2 else (-1,))


@dataclass
class ModelState:
    layers: list[State]
    pos: int = 0  # tokens consumed so far: the next token's absolute position
    extra: dict = field(default_factory=dict)


class LanguageModel(nn.Module):
    def __init__(self, cfg: LMConfig, mixers: list[Mixer], mlps: list[nn.Module | None] | None = None):
        super().__init__()
        if len(mixers) != cfg.n_layers:
            raise ValueError(f"got {len(mixers)} mixers for n_layers={cfg.n_layers}")
        check_causal_layers(cfg.causal, mixers)
        if mlps is None:
            mlps = [None if cfg.mlp == "none" else MLP(cfg.d_model, cfg.mlp, cfg.mlp_ratio)
                    for _ in range(cfg.n_layers)]
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        nn.init.normal_(self.embed.weight, std=cfg.embed_std)
        self.positions = absolute_positions(cfg.pos_encoding, cfg.d_model, cfg.max_seq_len, cfg.embed_std)
        for i, mixer in enumerate(mixers):
            mixer.layer_idx = i
        self.blocks = nn.ModuleList(Block(cfg.d_model, m, f, cfg.norm, cfg.norm_position)
                                    for m, f in zip(mixers, mlps))
        # Post-norm blocks end normalised already: the original Transformer has no final norm.
        self.norm = make_norm(cfg.norm, cfg.d_model) if cfg.norm_position == "pre" else nn.Identity()
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self.arch_name: str = type(self).__name__
        self.arch_kwargs: dict = {}

    # -- properties the harness reads ----------------------------------------------------
    @property
    def mixers(self) -> list[Mixer]:
        return [b.mixer for b in self.blocks]

    @property
    def causal(self) -> bool:
        """False for a bidirectional (encoder-only) model: no step/prefill, no decode rows."""
        return self.cfg.causal

    def _check_decodes(self) -> None:
        if not self.causal:
            raise BidirectionalDecodeError(f"{self.arch_name}: {DECODE_HINT}")

    @property
    def max_seq_len(self) -> int | None:
        """Longest sequence this model can process (None = unbounded)."""
        limits = [self.cfg.max_seq_len] if self.cfg.pos_encoding == "learned" else []
        limits += [m.max_seq_len for m in self.mixers if getattr(m, "max_seq_len", None)]
        return min(limits) if limits else None

    def num_params(self, exclude_embeddings: bool = False, active_only: bool = False) -> int:
        """Unique parameters (a tied head counts once). ``active_only``: what one token
        uses - an MoE layer counts its router and top_k experts, not all of them."""
        from archs.blocks import MoE

        skip = {id(self.embed.weight)} if exclude_embeddings else set()
        total = sum(p.numel() for p in self.parameters() if id(p) not in skip)
        if active_only:
            for block in self.blocks:
                if isinstance(block.mlp, MoE):
                    per_expert = sum(p.numel() for p in block.mlp.experts[0].parameters())
                    total -= (block.mlp.n_experts - block.mlp.top_k) * per_expert
        return total

    def backends(self, device: torch.device | str | None = None, seq_len: int | None = None) -> str:
        """The code paths that run on ``device`` for a ``seq_len``-token input, e.g. "fused",
        or "chunked+fused" for a hybrid (words from archs.backends)."""
        names = dict.fromkeys(m.resolved_backend(device, seq_len) for m in self.mixers)
        return "+".join(names)

    def aux_loss(self) -> torch.Tensor | None:
        """Sum of the auxiliary losses (MoE load balance) of the last forward, or None."""
        losses = [loss for b in self.blocks if (loss := b.aux_loss()) is not None]
        return torch.stack(losses).sum() if losses else None

    # -- input checks --------------------------------------------------------------------
    def _check_tokens(self, tokens: torch.Tensor, first_pos: int) -> None:
        if tokens.dtype not in (torch.long, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"tokens must be an integer tensor (torch.long), got {tokens.dtype}; "
                            f"pass token ids, not embeddings or floats")
        if tokens.device.type == "cpu" and tokens.numel():  # a check on GPU would sync
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= self.cfg.vocab_size:
                raise ValueError(f"token ids must be in [0, {self.cfg.vocab_size}); got range "
                                 f"[{lo}, {hi}]. Build the model with a larger vocab_size.")
        limit = self.max_seq_len
        last = first_pos + (tokens.shape[-1] if tokens.dim() > 1 else 1)
        if limit is not None and last > limit:
            raise SequenceTooLongError(
                f"sequence reaches {last} tokens but {self.arch_name} supports at most {limit} "
                f"(pos_encoding={self.cfg.pos_encoding!r}, max_seq_len={self.cfg.max_seq_len}).")

    def _embed(self, tokens: torch.Tensor, first_pos: int) -> torch.Tensor:
        return add_positions(self.embed(tokens), self.positions, first_pos)

    # -- the three forms -----------------------------------------------------------------
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, L, V) logits, parallel over the sequence."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, length), got shape {tuple(tokens.shape)}")
        self._check_tokens(tokens, 0)
        h = self._embed(tokens, 0)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> ModelState:
        ref = self.embed.weight
        device = ref.device if device is None else device
        dtype = ref.dtype if dtype is None else dtype
        if not self.causal:  # nothing to carry: a bidirectional model never decodes
            return ModelState([None] * len(self.mixers), pos=0)
        return ModelState([m.init_state(batch_size, device, dtype) for m in self.mixers], pos=0)

    def step(self, tokens_t: torch.Tensor, state: ModelState) -> tuple[torch.Tensor, ModelState]:
        """(B,) token ids at position ``state.pos`` -> (B, V) logits, advanced state."""
        self._check_decodes()
        if tokens_t.dim() != 1:
            raise ValueError(f"step takes one token per sequence, shape (batch,), got {tuple(tokens_t.shape)}")
        self._check_tokens(tokens_t, state.pos)
        h = self._embed(tokens_t, state.pos)
        for i, block in enumerate(self.blocks):
            h, state.layers[i] = block.step(h, state.layers[i])
        state.pos += 1
        return self.head(self.norm(h)), state

    def prefill(self, tokens: torch.Tensor, state: ModelState) -> tuple[torch.Tensor, ModelState]:
        """(B, L) continuing from ``state`` -> (B, L, V) logits, advanced state.

        Evaluating a long sequence chunk by chunk this way holds only one chunk's
        activations plus the state: constant memory for recurrent mixers.
        """
        self._check_decodes()
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, length), got shape {tuple(tokens.shape)}")
        self._check_tokens(tokens, state.pos)
        h = self._embed(tokens, state.pos)
        for i, block in enumerate(self.blocks):
            h, state.layers[i] = block.prefill(h, state.layers[i])
        state.pos += tokens.shape[1]
        return self.head(self.norm(h)), state

    def analytic_flops(self, batch_size: int, seq_len: int) -> int | None:
        """Closed-form forward FLOPs of one parallel pass (see ``analytic_flops``)."""
        return analytic_flops(self, batch_size, seq_len)

    def state_size_bytes(self, state: ModelState) -> int:
        return sum(m.state_size_bytes(s) for m, s in zip(self.mixers, state.layers))

    def expected_state_bytes(self, batch_size: int, context_len: int,
                             dtype: torch.dtype | None = None) -> int | None:
        """Analytic decode-state size after ``context_len`` tokens (None if a mixer doesn't say,
        and for a bidirectional model, which never decodes)."""
        if not self.causal:
            return None
        dtype = dtype or self.embed.weight.dtype
        sizes = [m.expected_state_bytes(batch_size, context_len, dtype) for m in self.mixers]
        return None if any(s is None for s in sizes) else sum(sizes)


def _linear_flops(module: nn.Module) -> int:
    """2 * in * out per token for every nn.Linear below ``module``."""
    return sum(2 * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def mlp_flops(mlp: nn.Module | None) -> int:
    """Forward FLOPs per token of a block's MLP: an MoE layer counts its router plus top_k
    of its experts."""
    from archs.blocks import MoE

    if isinstance(mlp, MoE):
        return _linear_flops(mlp.router) + mlp.top_k * _linear_flops(mlp.experts[0])
    return 0 if mlp is None else _linear_flops(mlp)


def blocks_flops(blocks, batch_size: int, seq_len: int) -> int | None:
    """Forward FLOPs of residual blocks over (batch, seq_len): each mixer's nn.Linear layers
    and declared ``sequence_flops``, each MLP (None if a mixer does not declare its cost)."""
    per_token, mixing = 0, 0
    for block in blocks:
        mixer_flops = block.mixer.sequence_flops(batch_size, seq_len)
        if mixer_flops is None:
            return None
        mixing += mixer_flops
        per_token += _linear_flops(block.mixer) + mlp_flops(block.mlp)
    return per_token * batch_size * seq_len + mixing


def analytic_flops(model: LanguageModel, batch_size: int, seq_len: int) -> int | None:
    """Closed-form forward FLOPs (multiply-add = 2) of one pass over (batch, seq_len).

    Every nn.Linear costs 2·in·out per token (the head included; the embedding lookup is
    free); an MoE layer counts its router plus top_k of its experts; each mixer adds its
    declared ``sequence_flops``. Elementwise work (norms, activations) is left out, as in
    the usual 6·N·T accounting. None if some mixer does not declare its mixing cost.
    """
    body = blocks_flops(model.blocks, batch_size, seq_len)
    return None if body is None else body + _linear_flops(model.head) * batch_size * seq_len


def build_lm(cfg: LMConfig, make_mixer: Callable[[int], Mixer],
             make_mlp: Callable[[int], nn.Module | None] | None = None) -> LanguageModel:
    """The usual way a builder assembles its model: one mixer (and MLP) per layer index;
    with ``cfg.causal`` False, each mixer in its bidirectional form (archs/bidirectional.py)."""
    mixers = [make_mixer(i) if cfg.causal else make_bidirectional(make_mixer, i)
              for i in range(cfg.n_layers)]
    mlps = None if make_mlp is None else [make_mlp(i) for i in range(cfg.n_layers)]
    return LanguageModel(cfg, mixers, mlps)


__all__ = ["LMConfig", "LanguageModel", "ModelState", "build_lm", "ABSOLUTE"]
