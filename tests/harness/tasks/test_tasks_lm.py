"""Tests of the language-modelling task and its download-free corpora."""

from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path

import pytest
import torch

from harness.tasks import Scores, TextLM, get_task, nats_to_bpb
from harness.tasks import corpus as corpus_mod
from harness.tasks.lm import _encode_bpe, _split_bytes

from tests.tiny import gen


@pytest.fixture
def text(tmp_path: Path) -> tuple[Path, bytes]:
    data = b"".join(b"line %05d: the quick brown fox jumps over the lazy dog\n" % i for i in range(2000))
    path = tmp_path / "corpus.txt"
    path.write_bytes(data)
    return path, data


def test_bits_per_byte_conversion():
    assert nats_to_bpb(math.log(2)) == pytest.approx(1.0)
    assert nats_to_bpb(math.log(256)) == pytest.approx(8.0)
    # A token worth 4 bytes spreads its bits over them.
    assert nats_to_bpb(4 * math.log(2), bytes_per_token=4.0) == pytest.approx(1.0)


def test_windows_come_from_the_right_split_and_targets_are_shifted(text):
    path, data = text
    task = get_task("lm", path=str(path))
    cut = int(len(data) * 0.9)
    for split, part in (("train", data[:cut]), ("eval", data[cut:])):
        batch = task.sample(8, 100, gen(0), split=split)
        assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])
        assert bool(batch.scored.all()), "every position of a window is scored"
        for x, y in zip(batch.inputs.tolist(), batch.targets.tolist()):
            assert bytes(x + y[-1:]) in part


def test_longest_window_is_the_split_and_longer_is_a_clear_error(text):
    path, data = text
    task = get_task("lm", path=str(path))
    longest = len(data) - int(len(data) * 0.9) - 1
    assert task.max_len("eval") == longest
    assert task.sample(2, longest, gen(0), split="eval").inputs.shape == (2, longest)
    with pytest.raises(ValueError, match=f"longer than max_len={longest} of the 'eval' split"):
        task.sample(2, longest + 1, gen(0), split="eval")


def test_folder_of_txt_files_is_read_sorted(tmp_path: Path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("third")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "skip.md").write_text("not text")
    corpus = corpus_mod.load_corpus(path=tmp_path)
    assert corpus.files == ("a.txt", "b.txt", "sub/c.txt")
    assert corpus.data == b"first\n\nsecond\n\nthird"


def test_edited_file_is_read_again(text):
    path, data = text
    assert corpus_mod.load_corpus(path=path).data == data
    path.write_bytes(b"changed text, longer than before " * 10)
    assert corpus_mod.load_corpus(path=path).data.startswith(b"changed")


def test_bad_paths_and_parameters_are_clear(tmp_path: Path):
    with pytest.raises(ValueError, match="does not exist; give a text file or a folder"):
        get_task("lm", path=str(tmp_path / "missing.txt")).sample(1, 8, gen(0))
    with pytest.raises(ValueError, match="holds no .txt files"):
        get_task("lm", path=str(tmp_path)).sample(1, 8, gen(0))
    with pytest.raises(ValueError, match="unknown corpus 'wikitext'; built-in corpora: stdlib_docs, std"):
        TextLM(corpus="wikitext")
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        TextLM(tokenizer="wordpiece")
    with pytest.raises(ValueError, match="eval_fraction must be in"):
        TextLM(eval_fraction=1.0)


def test_metrics_report_bits_per_byte(text):
    path, _ = text
    task = get_task("lm", path=str(path))
    scores = Scores(loss_sum=10 * math.log(4), n_scored=10, n_correct=5)
    metrics = task.metrics(scores)
    assert metrics["bpb"] == pytest.approx(2.0) and metrics["acc"] == 0.5
    assert "seq_acc" not in metrics


def test_fingerprint_hashes_the_built_bytes_and_is_stable():
    # Small modules every CPython 3 has: keeps the (uncached) builds quick.
    small = {"abc.py", "bisect.py", "colorsys.py", "keyword.py"}
    files = [f for f in corpus_mod.stdlib_files() if f in small]
    assert len(files) == 4
    first, again = corpus_mod.build_stdlib_docs(files), corpus_mod.build_stdlib_docs(files)
    assert first.fingerprint() == again.fingerprint()
    assert first.fingerprint()["sha256"] == hashlib.sha256(first.data).hexdigest()
    source = corpus_mod.build_stdlib_source(files)
    assert source.fingerprint()["n_files"] == 4 and source.data != first.data


def test_stdlib_file_list_is_sorted_and_skips_tests():
    files = corpus_mod.stdlib_files()
    assert files == sorted(files) and len(files) > 100
    assert not any(part in ("test", "tests", "site-packages") for f in files for part in f.split("/"))


def test_docstrings_are_extracted_without_importing():
    src = (
        b'"""Module doc."""\nimport not_a_module\n'
        b'class A:\n    """Class doc."""\n    def f(self):\n        """Method doc."""\n'
    )
    assert corpus_mod.docstrings(src) == ["Module doc.", "Class doc.", "Method doc."]
    assert corpus_mod.docstrings(b"def broken(:\n") == []


@pytest.mark.slow
def test_default_corpus_is_english_prose_cached_in_memory():
    # The one test that builds the full default corpus (2-4 s on 2 cores, once per process).
    task = get_task("lm")
    corpus = task.text()
    assert corpus is corpus_mod.load_corpus()  # cached, not rebuilt
    fp = task.fingerprint()
    assert fp["corpus"] == "stdlib_docs" and fp["n_bytes"] > 1_000_000 and fp["vocab_size"] == 256
    assert corpus.files[0].startswith("pydoc_data/") and "the" in corpus.data[:100_000].decode().split()
    letters = sum(chr(b).isalpha() or chr(b) == " " for b in corpus.data[:100_000])
    assert letters > 0.75 * 100_000, "mostly words, not code"
    assert task.sample(2, 2**14, gen(0), split="eval").inputs.shape == (2, 2**14)


def test_bpe_without_the_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import now raises ImportError
    with pytest.raises(ImportError, match="pip install tokenizers"):
        TextLM(tokenizer="bpe")


def test_bpe_is_deterministic_and_compresses(text):
    pytest.importorskip("tokenizers")
    path, data = text
    parts = _split_bytes(data, 0.1)
    first, again = _encode_bpe(parts, 300), _encode_bpe(parts, 300)
    assert first.tokenizer_sha256 == again.tokenizer_sha256
    assert torch.equal(first.splits["eval"], again.splits["eval"])
    task = get_task("lm", path=str(path), tokenizer="bpe", bpe_vocab_size=300)
    batch = task.sample(4, 64, gen(0), split="eval")
    assert int(batch.inputs.max()) < task.vocab_size <= 300
    assert task.encoded().bytes_per_token["eval"] > 1.5
    assert task.fingerprint()["tokenizer_sha256"] == first.tokenizer_sha256
    with pytest.raises(ValueError, match="bpe_vocab_size must exceed the 256"):
        TextLM(tokenizer="bpe", bpe_vocab_size=200)
