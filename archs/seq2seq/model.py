"""The encoder-decoder shell (the original Transformer, T5, BART): an encoder stack reads
the source bidirectionally, a decoder stack writes the target causally and reads the
encoder's output through cross-attention in every layer.

One token sequence carries both sides, in the layout the sequence-to-sequence tasks use
(``harness/tasks/seq2seq.py``) and a decoder-only model reads as its "prefix" form:

    tokens:  s_1 .. s_S  SEP  t_1 .. t_T        (SEP = the ``separator`` token id)
    encoder: s_1 .. s_S  (bidirectional: any family with a bidirectional form)
    decoder: SEP t_1 .. t_T  (causal; decoder position 0 is the separator)
    logits:  0 at the source positions (the encoder predicts nothing: a uniform guess,
             never scored), then the decoder's predictions of t_1 .. t_T and beyond

Every row of a batch has its separator at the same position (the first SEP of the row).
Decoding reads the source token by token (held in the state), and at the separator
encodes it once and fills every layer's cross-attention cache (``CrossCache``: the
encoder output's keys and values); the decoder then steps like any causal LM. Step, prefill
and the parallel forward agree (tests/archs/seq2seq). A decoder layer is the T5 order:
causal self-mixing, cross-attention, MLP, each a pre-norm residual ``Block``; one token
table serves the encoder, the decoder and (tied) the output head.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from archs.blocks import Block
from archs.mixer import Mixer, State, tensor_bytes
from archs.model import LanguageModel, add_positions, blocks_flops, _linear_flops, mlp_flops
from archs.seq2seq.cross import CrossAttention, CrossCache

SOURCE_DTYPE = torch.long  # the held source tokens (what the state holds before the separator)


def benchmark_source_len(seq_len: int) -> int:
    """The cost benchmark's layout of a ``seq_len``-token input: the first half is the source."""
    return seq_len // 2


@dataclass
class Seq2SeqState:
    layers: list[State]            # the decoder side, aligned with model.mixers (self, cross, ...)
    source: torch.Tensor | None    # (B, S) source tokens held until the separator; None after it
    pos: int = 0                   # tokens consumed: source, separator and target
    decoder_pos: int = 0           # tokens the decoder consumed (from the separator on)
    extra: dict = field(default_factory=dict)


class EncoderDecoderLM(nn.Module):
    # The LM shell's bookkeeping reads only cfg, embed, blocks and mixers, which this
    # model has too: parameter counts (MoE active counts over encoder and decoder), the
    # MoE auxiliary loss, the length limit, token checks.
    num_params = LanguageModel.num_params
    aux_loss = LanguageModel.aux_loss
    max_seq_len = LanguageModel.max_seq_len
    _check_tokens = LanguageModel._check_tokens
    causal = True  # over the whole sequence: an output never depends on a later token

    def __init__(self, encoder: LanguageModel, decoder: LanguageModel, cross: list[CrossAttention],
                 separator: int):
        super().__init__()
        if encoder.causal or not decoder.causal:
            raise ValueError("an encoder-decoder needs a bidirectional encoder (causal=False) and a "
                             "causal decoder")
        if len(cross) != decoder.cfg.n_layers:
            raise ValueError(f"{len(cross)} cross-attention layers for {decoder.cfg.n_layers} decoder layers")
        self.cfg = decoder.cfg
        if not -self.cfg.vocab_size <= separator < self.cfg.vocab_size:
            raise ValueError(f"separator={separator} is not a token id of the vocabulary "
                             f"(size {self.cfg.vocab_size}); -1 means the last id")
        self.separator = separator % self.cfg.vocab_size
        self.embed = decoder.embed  # one token table for both sides (tied to the head, if tied)
        self.encoder_positions, self.positions = encoder.positions, decoder.positions
        d, norm = self.cfg.d_model, self.cfg.norm
        layers = []
        for i, (block, attend) in enumerate(zip(decoder.blocks, cross)):
            attend.layer_idx = i
            layers += [Block(d, block.mixer, None, norm), Block(d, attend, block.mlp, norm)]
        self.n_encoder_blocks = len(encoder.blocks)
        self.blocks = nn.ModuleList([*encoder.blocks, *layers])  # every block: encoder, then decoder
        self.encoder_norm, self.norm, self.head = encoder.norm, decoder.norm, decoder.head
        self.arch_name: str = type(self).__name__
        self.arch_kwargs: dict = {}

    # -- structure -------------------------------------------------------------------------
    @property
    def encoder_blocks(self) -> list[Block]:
        return list(self.blocks[: self.n_encoder_blocks])

    @property
    def decoder_blocks(self) -> list[Block]:
        """Self-mixing and cross-attention blocks, alternating (self, cross, self, ...)."""
        return list(self.blocks[self.n_encoder_blocks:])

    @property
    def mixers(self) -> list[Mixer]:
        """The decoder's mixers, aligned with the decode state's layers."""
        return [b.mixer for b in self.decoder_blocks]

    @property
    def cross_mixers(self) -> list[CrossAttention]:
        return self.mixers[1::2]

    def backends(self, device=None, seq_len: int | None = None) -> str:
        names = dict.fromkeys(b.mixer.resolved_backend(device, seq_len) for b in self.blocks)
        return "+".join(names)

    # -- the separator ---------------------------------------------------------------------
    def separator_column(self, tokens: torch.Tensor, required: bool = True) -> int | None:
        """The column of every row's first separator; None if no row has one (``required``
        False). Rows that disagree, or a missing separator when required, are errors."""
        is_sep = tokens == self.separator
        has = is_sep.any(dim=1)
        if not bool(has.any()) and not required:
            return None
        first = is_sep.int().argmax(dim=1)
        if not bool(has.all()) or bool((first != first[0]).any()):
            where = [int(c) if h else None for c, h in zip(first, has)]
            raise ValueError(
                f"{self.arch_name}: every row needs its separator (token {self.separator}) at the same "
                f"position - the source before it, the target after it - but the first separator "
                f"of each row is at {where} (None: no separator). Train it on a sequence-to-sequence "
                f"task (task=seq2seq) or batch sources of one length.")
        return int(first[0])

    def benchmark_tokens(self, batch_size: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
        """Random tokens in the cost benchmark's layout: a source of seq_len // 2 tokens, the
        separator, the rest target (no other separator)."""
        src = benchmark_source_len(seq_len)
        if src < 1:
            raise ValueError(f"{self.arch_name} needs at least 2 tokens (a source and the separator)")
        tokens = torch.randint(0, self.cfg.vocab_size - 1, (batch_size, seq_len), generator=generator)
        tokens = tokens + (tokens >= self.separator).long()  # every id but the separator
        tokens[:, src] = self.separator
        return tokens

    # -- the pieces ------------------------------------------------------------------------
    def _encode(self, source: torch.Tensor) -> list[CrossCache]:
        """Source embeddings (B, S, D) -> each decoder layer's cross-attention cache."""
        if source.shape[1] == 0:
            raise ValueError(f"{self.arch_name}: the source is empty (the separator is the first "
                             f"token); put at least one source token before it")
        h = add_positions(source, self.encoder_positions, 0)
        for block in self.encoder_blocks:
            h = block(h)
        encoded = self.encoder_norm(h)
        return [attend.memory(encoded) for attend in self.cross_mixers]

    def _decode(self, h: torch.Tensor, first_pos: int, layers: list[State], form: str) -> torch.Tensor:
        """Decoder embeddings from ``first_pos`` on -> logits; ``form`` is "forward" (the
        self-mixers' parallel form), "prefill" or "step" (their decode forms, on ``layers``)."""
        h = add_positions(h, self.positions, first_pos)
        for i, block in enumerate(self.decoder_blocks):
            if form == "forward" and i % 2 == 0:
                h = block(h)
            elif form == "step":
                h, layers[i] = block.step(h, layers[i])
            else:
                h, layers[i] = block.prefill(h, layers[i])
        return self.head(self.norm(h))

    def _blank(self, tokens: torch.Tensor, n: int, like: torch.Tensor | None = None) -> torch.Tensor:
        """Logits 0 for ``n`` source positions: nothing is predicted inside the source."""
        dtype = self.embed.weight.dtype if like is None else like.dtype
        return torch.zeros(tokens.shape[0], n, self.cfg.vocab_size, device=tokens.device, dtype=dtype)

    # -- the three forms -------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) tokens with a separator -> (B, L, V) logits, parallel over both sides."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, length), got shape {tuple(tokens.shape)}")
        self._check_tokens(tokens, 0)
        col = self.separator_column(tokens)
        h = self.embed(tokens)  # one lookup for both sides (the conformance suite taps it)
        caches = self._encode(h[:, :col])
        layers = [None if i % 2 == 0 else caches[i // 2] for i in range(len(self.mixers))]
        logits = self._decode(h[:, col:], 0, layers, "forward")
        return torch.cat([self._blank(tokens, col, logits), logits], dim=1)

    def init_state(self, batch_size: int, device=None, dtype=None) -> Seq2SeqState:
        device = self.embed.weight.device if device is None else device
        dtype = self.embed.weight.dtype if dtype is None else dtype
        layers = [m.init_state(batch_size, device, dtype) for m in self.mixers]
        return Seq2SeqState(layers, torch.zeros(batch_size, 0, dtype=SOURCE_DTYPE, device=device))

    def _start_decoding(self, state: Seq2SeqState) -> None:
        """At the separator: encode the held source once, fill the cross-attention caches."""
        for i, cache in enumerate(self._encode(self.embed(state.source))):
            state.layers[2 * i + 1] = cache
        state.source = None

    def prefill(self, tokens: torch.Tensor, state: Seq2SeqState) -> tuple[torch.Tensor, Seq2SeqState]:
        """(B, L) continuing from ``state`` -> (B, L, V); a chunk may hold the separator."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, length), got shape {tuple(tokens.shape)}")
        self._check_tokens(tokens, state.pos)
        blank = 0
        if state.source is not None:  # still reading the source
            col = self.separator_column(tokens, required=False)
            blank = tokens.shape[1] if col is None else col
            state.source = torch.cat([state.source, tokens[:, :blank].to(SOURCE_DTYPE)], dim=1)
            state.pos += blank
            if col is None:
                return self._blank(tokens, blank), state
            self._start_decoding(state)
        target = tokens[:, blank:]
        logits = self._decode(self.embed(target), state.decoder_pos, state.layers, "prefill")
        state.pos += target.shape[1]
        state.decoder_pos += target.shape[1]
        return torch.cat([self._blank(tokens, blank, logits), logits], dim=1), state

    def step(self, tokens_t: torch.Tensor, state: Seq2SeqState) -> tuple[torch.Tensor, Seq2SeqState]:
        """(B,) tokens at position ``state.pos`` -> (B, V) logits, advanced state."""
        if tokens_t.dim() != 1:
            raise ValueError(f"step takes one token per sequence, shape (batch,), got {tuple(tokens_t.shape)}")
        self._check_tokens(tokens_t, state.pos)
        state.pos += 1
        if state.source is not None:
            at_separator = tokens_t == self.separator
            if not bool(at_separator.any()):
                state.source = torch.cat([state.source, tokens_t[:, None].to(SOURCE_DTYPE)], dim=1)
                return self._blank(tokens_t, 1)[:, 0], state
            if not bool(at_separator.all()):
                raise ValueError(f"{self.arch_name}: rows reach the separator at different steps; "
                                 f"decode sources of one length together")
            self._start_decoding(state)
        logits = self._decode(self.embed(tokens_t), state.decoder_pos, state.layers, "step")
        state.decoder_pos += 1
        return logits, state

    # -- bookkeeping -----------------------------------------------------------------------
    def state_size_bytes(self, state: Seq2SeqState) -> int:
        held = tensor_bytes(state.source)
        return held + sum(m.state_size_bytes(s) for m, s in zip(self.mixers, state.layers))

    def expected_state_bytes(self, batch_size: int, context_len: int, dtype: torch.dtype | None = None,
                             source_len: int | None = None) -> int | None:
        """Decode-state bytes after ``context_len`` tokens of which the first ``source_len``
        (default: the benchmark's half) are the source: before the separator, the source
        tokens held; after it, every layer's cross-attention cache plus the decoder's own
        state after its ``context_len - source_len`` tokens."""
        dtype = dtype or self.embed.weight.dtype
        source_len = benchmark_source_len(context_len) if source_len is None else source_len
        if context_len <= source_len:
            held, decoded, cross = batch_size * context_len * SOURCE_DTYPE.itemsize, 0, 0
        else:
            held, decoded = 0, context_len - source_len
            cross = sum(m.cache_bytes(batch_size, source_len, dtype) for m in self.cross_mixers)
        own = [m.expected_state_bytes(batch_size, decoded, dtype) for m in self.mixers[0::2]]
        return None if any(s is None for s in own) else held + cross + sum(own)

    def analytic_flops(self, batch_size: int, seq_len: int, source_len: int | None = None) -> int | None:
        """Forward FLOPs over a ``seq_len``-token input whose first ``source_len`` tokens
        (default: the benchmark's half) are the source: the encoder over the source, the
        decoder over the rest, cross-attention between them, the head on decoder positions."""
        source = benchmark_source_len(seq_len) if source_len is None else source_len
        target = seq_len - source
        encoder = blocks_flops(self.encoder_blocks, batch_size, source)
        decoder = blocks_flops(self.decoder_blocks[0::2], batch_size, target)
        if encoder is None or decoder is None:
            return None
        cross = sum(b.mixer.flops(batch_size, target, source) + mlp_flops(b.mlp) * batch_size * target
                    for b in self.decoder_blocks[1::2])
        return encoder + decoder + cross + _linear_flops(self.head) * batch_size * target
