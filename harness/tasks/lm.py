"""Language modelling on real text: random windows of a corpus, every position scored.

Byte-level by default (vocab 256: no tokenizer to train, ship or version, and
bits-per-byte is the loss itself in base 2). `tokenizer="bpe"` trains a byte-level BPE
on the training split with the optional `tokenizers` package (never a hard dependency).

The corpus (see `harness.tasks.corpus`) is split once, deterministically, on bytes: the
first 1 - eval_fraction for training, the last eval_fraction for evaluation. A batch
is B windows of seq_len + 1 tokens at uniform random starts in the requested split;
inputs = window[:-1], targets = window[1:].

Reported: loss (nats per token), acc, and bpb = loss / ln 2 / (bytes per token), with
bytes per token measured on the evaluation split (exactly 1 for bytes).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from harness.tasks._random import randint
from harness.tasks.base import Batch, Scores, Task, register_task
from harness.tasks.corpus import CORPORA, Corpus, load_corpus

TOKENIZERS = ("byte", "bpe")


def nats_to_bpb(mean_nats: float, bytes_per_token: float = 1.0) -> float:
    """Bits per byte from a mean loss in nats per token."""
    return mean_nats / math.log(2) / bytes_per_token


def _require_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as err:
        raise ImportError(
            "lm: tokenizer='bpe' needs the optional package 'tokenizers' "
            "(pip install tokenizers); tokenizer='byte' needs nothing"
        ) from err
    return tokenizers


@dataclass(frozen=True)
class EncodedText:
    """A corpus split and tokenized: token ids per split, and what a token is worth."""

    splits: dict[str, torch.Tensor]  # split -> (N,) token ids (uint8 bytes or int32 BPE ids)
    vocab_size: int
    bytes_per_token: dict[str, float]
    tokenizer_sha256: str | None  # None for bytes


def _split_bytes(data: bytes, eval_fraction: float) -> dict[str, bytes]:
    cut = int(len(data) * (1.0 - eval_fraction))
    return {"train": data[:cut], "eval": data[cut:]}


def _byte_tensor(data: bytes) -> torch.Tensor:
    if not data:
        return torch.zeros(0, dtype=torch.uint8)
    # bytearray: torch.frombuffer wants a writable buffer; one copy per corpus.
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _encode_bytes(parts: dict[str, bytes]) -> EncodedText:
    splits = {k: _byte_tensor(v) for k, v in parts.items()}
    return EncodedText(splits, 256, {k: 1.0 for k in parts}, None)


def _encode_bpe(parts: dict[str, bytes], vocab_size: int) -> EncodedText:
    tk = _require_tokenizers()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
        show_progress=False,
    )
    # A cut can fall inside a UTF-8 character; "replace" keeps the split deterministic.
    texts = {k: v.decode("utf-8", errors="replace") for k, v in parts.items()}
    tok.train_from_iterator(texts["train"].splitlines(keepends=True), trainer=trainer)
    splits, per_token = {}, {}
    for k, text in texts.items():
        lines = text.splitlines(keepends=True)
        ids = [i for enc in tok.encode_batch(lines) for i in enc.ids]
        splits[k] = torch.tensor(ids, dtype=torch.int32)
        per_token[k] = len(parts[k]) / max(len(ids), 1)
    sha = hashlib.sha256(tok.to_str().encode()).hexdigest()
    return EncodedText(splits, tok.get_vocab_size(), per_token, sha)


@lru_cache(maxsize=8)
def encode_corpus(corpus: Corpus, tokenizer: str, bpe_vocab_size: int, eval_fraction: float) -> EncodedText:
    """Split and tokenize a corpus; cached in memory per (corpus, tokenizer settings)."""
    parts = _split_bytes(corpus.data, eval_fraction)
    return _encode_bytes(parts) if tokenizer == "byte" else _encode_bpe(parts, bpe_vocab_size)


@register_task("lm")
@dataclass
class TextLM(Task):
    corpus: str = "stdlib_docs"  # built-in, no download (see corpus.py); ignored if path is set
    path: str | None = None  # a text file or a folder of .txt files of your own
    tokenizer: str = "byte"  # bytes: nothing to train; bpb is the loss itself
    bpe_vocab_size: int = 4096  # only for tokenizer="bpe"
    eval_fraction: float = 0.1  # the last 10% of the bytes are held out

    default_seq_len = 512
    has_seq_acc = False  # every position is scored; "whole window right" means nothing

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"lm: tokenizer must be one of {TOKENIZERS}, got {self.tokenizer!r}")
        if self.path is None and self.corpus not in CORPORA:
            raise ValueError(
                f"lm: unknown corpus {self.corpus!r}; built-in corpora: {', '.join(CORPORA)} (or set path=)"
            )
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"lm: eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if self.tokenizer == "bpe":
            _require_tokenizers()
            if self.bpe_vocab_size <= 256:
                raise ValueError(
                    "lm: bpe_vocab_size must exceed the 256 byte symbols it starts from, "
                    f"got {self.bpe_vocab_size}"
                )

    def text(self) -> Corpus:
        return load_corpus(self.corpus, self.path)

    def encoded(self) -> EncodedText:
        return encode_corpus(self.text(), self.tokenizer, self.bpe_vocab_size, self.eval_fraction)

    @property
    def vocab_size(self) -> int:
        return 256 if self.tokenizer == "byte" else self.encoded().vocab_size

    def min_len(self) -> int:
        return 1

    def max_len(self, split: str = "train") -> int | None:
        # A window is seq_len + 1 tokens: inputs and their next-token targets.
        return len(self.encoded().splits[split]) - 1

    def fingerprint(self) -> dict[str, Any]:
        """Corpus fingerprint plus tokenizer identity, for result rows."""
        enc = self.encoded()
        return {
            **self.text().fingerprint(),
            "tokenizer": self.tokenizer,
            "vocab_size": enc.vocab_size,
            "tokenizer_sha256": enc.tokenizer_sha256,
            "eval_fraction": self.eval_fraction,
        }

    def metrics(self, scores: Scores) -> dict[str, float]:
        per_token = self.encoded().bytes_per_token["eval"]
        return {**super().metrics(scores), "bpb": nats_to_bpb(scores.loss, per_token)}

    def _sample(self, batch_size: int, seq_len: int, generator: torch.Generator, split: str) -> Batch:
        tokens = self.encoded().splits[split]
        starts = randint(0, len(tokens) - seq_len, (batch_size,), generator).cpu()
        index = starts.unsqueeze(1) + torch.arange(seq_len + 1)  # (B, L + 1) window positions
        window = tokens[index].long().to(generator.device)
        return Batch(window[:, :-1], window[:, 1:])
