"""A count-based n-gram LM (interpolated Kneser-Ney) behind the LM interface the harness reads.

The model before the neural ones: trained by counting the tokens the neural models train on
(``archs.counting``), evaluated through the same path. ``forward`` returns log-probabilities
as the logits, so cross-entropy, accuracy and bits per byte are the usual ones. Its decode
state is the last ``order - 1`` tokens plus the count tables each step reads: the tables
are its memory (they grow with the training tokens, not with the context), and they are
what ``state_size_bytes`` reports.

The tables are int64 buffers (saved and loaded with the checkpoint, resized on load); the
continuation counts and discounts are derived from them when first needed after a change.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from archs.mixer import tensor_bytes
from archs.ngram.counts import (absolute_discount, continuation_counts, dense_rows, gram_keys,
                                history_ids, merge)
from archs.ngram.kneser_ney import interpolate, uniform

# Pending keys are merged into the tables past this many (bounds memory between forwards).
MERGE_EVERY = 1 << 22


@dataclass
class NGramConfig:
    vocab_size: int = 256
    order: int = 5                  # n: the next token from the last n - 1 tokens
    discount: float | None = None   # None: Ney's n1 / (n1 + 2 n2) per order and count kind

    def __post_init__(self) -> None:
        for key in ("vocab_size", "order"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if self.vocab_size ** self.order >= 1 << 62:
            raise ValueError(f"order {self.order} over a vocabulary of {self.vocab_size} does not fit "
                             f"an int64 key (vocab_size ** order < 2**62); lower the order")
        if self.discount is not None and not 0 < self.discount <= 1:
            raise ValueError(f"discount must be in (0, 1] or None (estimated), got {self.discount}")

    @property
    def n_layers(self) -> None:
        """No layers: a count table (result rows record None)."""
        return None


@dataclass
class NGramState:
    history: torch.Tensor              # (B, order - 1) the last tokens, oldest first (0-padded)
    tables: tuple[torch.Tensor, ...]   # the count tables each step reads (shared, not copies)
    pos: int = 0                       # tokens consumed so far


class NGramLM(nn.Module):
    trains_by_counting = True
    state_growth = "constant"          # in the context length (the tables grow with training)

    def __init__(self, cfg: NGramConfig):
        super().__init__()
        self.cfg = cfg
        for k in range(1, cfg.order + 1):
            self.register_buffer(f"keys_{k}", torch.zeros(0, dtype=torch.long))
            self.register_buffer(f"counts_{k}", torch.zeros(0, dtype=torch.long))
            # derived (not saved): continuation counts aligned with keys_k, for k < order
            self.register_buffer(f"continuation_{k}", torch.zeros(0, dtype=torch.long), persistent=False)
        self._pending: list[list[torch.Tensor]] = [[] for _ in range(cfg.order)]
        self._pending_n = 0
        self._discounts: dict[tuple[int, str], float] | None = None  # None: derive before use
        self.arch_name, self.arch_kwargs = type(self).__name__, {}

    # -- what the harness reads -------------------------------------------------------------
    mixers: list = []                  # no neural layers
    max_seq_len = None

    def backends(self, device=None, seq_len=None) -> str:
        return "ref"

    def aux_loss(self) -> None:
        return None

    def analytic_flops(self, batch_size: int, seq_len: int) -> None:
        return None  # lookups and elementwise work, no matmuls

    def num_params(self, exclude_embeddings: bool = False, active_only: bool = False) -> int:
        """Its parameters are its counts: one per distinct gram stored, at every order."""
        self._merge()
        return sum(len(getattr(self, f"keys_{k}")) for k in range(1, self.cfg.order + 1))

    # -- counting ------------------------------------------------------------------------------
    def count(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a (B, L) batch: each scored position's gram at every order its history allows."""
        self._check_tokens(inputs)
        for k in range(1, self.cfg.order + 1):
            self._pending[k - 1].append(gram_keys(inputs, targets, k, self.cfg.vocab_size))
        self._pending_n += inputs.numel()
        if self._pending_n * self.cfg.order > MERGE_EVERY:
            self._merge()

    def _merge(self) -> None:
        if not self._pending_n:
            if self._discounts is None:
                self._derive()
            return
        for k in range(1, self.cfg.order + 1):
            keys, counts = merge(getattr(self, f"keys_{k}"), getattr(self, f"counts_{k}"),
                                 torch.cat(self._pending[k - 1]).to(getattr(self, f"keys_{k}").device))
            setattr(self, f"keys_{k}", keys)
            setattr(self, f"counts_{k}", counts)
        self._pending = [[] for _ in range(self.cfg.order)]
        self._pending_n = 0
        self._derive()

    def _derive(self) -> None:
        """Continuation counts and discounts from the raw tables."""
        n, vocab, fixed = self.cfg.order, self.cfg.vocab_size, self.cfg.discount
        self._discounts = {}
        for k in range(1, n + 1):
            raw = getattr(self, f"counts_{k}")
            self._discounts[k, "raw"] = fixed or absolute_discount(raw)
            if k < n:
                cont = continuation_counts(getattr(self, f"keys_{k}"), getattr(self, f"keys_{k + 1}"), k, vocab)
                setattr(self, f"continuation_{k}", cont)
                self._discounts[k, "continuation"] = fixed or absolute_discount(cont[cont > 0])

    def state_dict(self, *args, **kwargs):
        self._merge()  # counts still pending belong in the checkpoint
        return super().state_dict(*args, **kwargs)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the tables' sizes are data, not architecture: take the checkpoint's
        for k in range(1, self.cfg.order + 1):
            for name in (f"keys_{k}", f"counts_{k}"):
                if prefix + name in state_dict:
                    setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        self._pending, self._pending_n, self._discounts = [[] for _ in range(self.cfg.order)], 0, None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- probabilities ---------------------------------------------------------------------------
    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be an integer tensor (torch.long), got {tokens.dtype}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.cfg.vocab_size}); got range "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")

    def _table(self, k: int, top: bool) -> tuple[torch.Tensor, torch.Tensor, float]:
        kind = "raw" if top else "continuation"
        counts = getattr(self, f"counts_{k}" if top else f"continuation_{k}")
        return getattr(self, f"keys_{k}"), counts, self._discounts[k, kind]

    def _probabilities(self, context: torch.Tensor, first_pos: int, length: int) -> torch.Tensor:
        """(B, order - 1 + length) context -> (B, length, V) next-token probabilities. Each
        position uses the highest order its history allows (raw counts there) and the
        continuation counts below it."""
        self._merge()
        n, vocab, batch = self.cfg.order, self.cfg.vocab_size, context.shape[0]
        pos = first_pos + torch.arange(length, device=context.device).repeat(batch)   # (B*L,)
        top_order = (pos + 2).clamp(max=n)
        lower = uniform(batch * length, vocab, context.device)
        out = torch.empty_like(lower)
        for k in range(1, n + 1):
            hist = history_ids(context, first_pos, length, k, vocab).flatten()        # (B*L,)
            for top in (True, False) if k < n else (True,):
                rows = (top_order == k) if top else (top_order > k)
                if not rows.any():
                    continue
                keys, counts, discount = self._table(k, top)
                unique, inverse = torch.unique(hist[rows], return_inverse=True)
                dense = dense_rows(unique, keys, counts, vocab)[inverse]             # (rows, V)
                probs = interpolate(dense, lower[rows], discount)
                if top:
                    out[rows] = probs
                else:
                    lower[rows] = probs
        return out.reshape(batch, length, vocab)

    def _run(self, tokens: torch.Tensor, state: NGramState) -> tuple[torch.Tensor, NGramState]:
        self._check_tokens(tokens)
        context = torch.cat([state.history, tokens.long()], dim=1)
        logits = self._probabilities(context, state.pos, tokens.shape[1]).log()
        history = context[:, context.shape[1] - (self.cfg.order - 1):]
        return logits, NGramState(history, self._tables(), state.pos + tokens.shape[1])

    # -- the three forms -------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, L, V) log-probabilities of the next token."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, length), got shape {tuple(tokens.shape)}")
        return self._run(tokens, self.init_state(tokens.shape[0], tokens.device))[0]

    def init_state(self, batch_size: int, device=None, dtype=None) -> NGramState:
        self._merge()
        device = self.keys_1.device if device is None else device
        history = torch.zeros(batch_size, self.cfg.order - 1, dtype=torch.long, device=device)
        return NGramState(history, self._tables(), 0)

    def prefill(self, tokens: torch.Tensor, state: NGramState) -> tuple[torch.Tensor, NGramState]:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, length), got shape {tuple(tokens.shape)}")
        return self._run(tokens, state)

    def step(self, tokens_t: torch.Tensor, state: NGramState) -> tuple[torch.Tensor, NGramState]:
        if tokens_t.dim() != 1:
            raise ValueError(f"step takes one token per sequence, shape (batch,), got {tuple(tokens_t.shape)}")
        logits, state = self._run(tokens_t[:, None], state)
        return logits[:, 0], state

    # -- memory ----------------------------------------------------------------------------------
    def _tables(self) -> tuple[torch.Tensor, ...]:
        names = [f"{kind}_{k}" for k in range(1, self.cfg.order + 1) for kind in ("keys", "counts")]
        names += [f"continuation_{k}" for k in range(1, self.cfg.order)]
        return tuple(getattr(self, name) for name in names)

    def state_size_bytes(self, state: NGramState) -> int:
        return tensor_bytes(state.history) + tensor_bytes(state.tables)

    def expected_state_bytes(self, batch_size: int, context_len: int, dtype: torch.dtype | None = None) -> int:
        self._merge()
        return batch_size * (self.cfg.order - 1) * 8 + tensor_bytes(self._tables())
