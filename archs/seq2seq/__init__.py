"""Encoder-decoder models (T5-style) whose encoder and decoder are any registered families.

    create_arch("encoder_decoder", encoder="transformer", decoder="mamba", d_model=64)

The encoder is the ``encoder`` architecture built bidirectional (``causal=False``: any
family archs/bidirectional.py can turn bidirectional), the decoder the ``decoder``
architecture as it is, with cross-attention added to every decoder layer. The decoder-only
way to do sequence to sequence - source, separator and target in one sequence, the way
Mamba-style models do it - needs no shell: any architecture trained on the same task
(``task=seq2seq``) is that "prefix" form.
"""
from __future__ import annotations

from typing import Any

from archs._registry import create_arch, register_arch
from archs.backends import VOCABULARY
from archs.seq2seq.cross import CrossAttention, CrossAttentionConfig, CrossCache
from archs.seq2seq.model import EncoderDecoderLM, Seq2SeqState, benchmark_source_len

_SELF = "encoder_decoder"


def encoder_decoder(vocab_size: int = 256, d_model: int = 128, n_layers: int = 2, *,
                    encoder: str = "transformer", decoder: str = "transformer",
                    encoder_layers: int | None = None, encoder_kwargs: dict[str, Any] | None = None,
                    decoder_kwargs: dict[str, Any] | None = None, cross_heads: int = 4,
                    cross_backend: str = "auto", separator: int = -1, **shell) -> EncoderDecoderLM:
    """Encoder-decoder LM (Vaswani et al. 2017; T5's layer order): ``n_layers`` decoder
    layers (and as many encoder layers unless ``encoder_layers``); ``encoder_kwargs`` /
    ``decoder_kwargs`` go to each family's builder, ``shell`` (norm, mlp, ...) to both.
    ``separator``: the token id between source and target (-1: the vocabulary's last id,
    where the sequence-to-sequence tasks put it)."""
    if _SELF in (encoder, decoder):
        raise ValueError(f"{_SELF}'s encoder and decoder are single-stack architectures, got "
                         f"encoder={encoder!r}, decoder={decoder!r}")
    if shell.get("causal", True) is not True:
        raise ValueError(f"{_SELF}: causal=False does not apply; the encoder is always bidirectional "
                         f"and the decoder causal")
    shell.pop("causal", None)
    common = dict(vocab_size=vocab_size, d_model=d_model, **shell)
    enc = create_arch(encoder, **common, n_layers=encoder_layers or n_layers, causal=False,
                      **(encoder_kwargs or {}))
    dec = create_arch(decoder, **common, n_layers=n_layers, **(decoder_kwargs or {}))
    cross = [CrossAttention(CrossAttentionConfig(d_model, cross_heads, backend=cross_backend))
             for _ in range(n_layers)]
    return EncoderDecoderLM(enc, dec, cross, separator)


register_arch(_SELF, family="seq2seq", color="#393b79",
              description="encoder-decoder (T5-style): a bidirectional encoder of any family, a causal "
                          "decoder of any family with cross-attention to the encoder's output",
              backends=VOCABULARY,
              tiny=dict(d_model=32, n_layers=2))(encoder_decoder)

__all__ = ["CrossAttention", "CrossAttentionConfig", "CrossCache", "EncoderDecoderLM", "Seq2SeqState",
           "benchmark_source_len", "encoder_decoder"]
