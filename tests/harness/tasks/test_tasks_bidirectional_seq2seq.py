"""The masked tasks (mlm, masked_recall) and seq2seq: every answer recomputed from the inputs
alone, BERT's corruption rates, and which models may take which task (Task.check_model)."""
from __future__ import annotations

import pytest
import torch

from archs import create_arch
from harness.tasks import IGNORE_INDEX, MaskedRecall, Scores, Seq2Seq, bert_corrupt, get_task

from tests.tiny import gen


# --- BERT's corruption ------------------------------------------------------------------------

def test_bert_corruption_rates_and_targets():
    clean = torch.randint(0, 50, (400, 100), generator=gen(0))
    batch = bert_corrupt(clean, vocab=50, mask_token=50, generator=gen(1))
    picked = batch.scored
    assert bool((picked.sum(dim=1) == 15).all())  # 15% of 100 positions, every row
    assert torch.equal(batch.targets[picked], clean[picked])  # the originals, only there
    assert torch.equal(batch.inputs[~picked], clean[~picked])  # nothing else is touched
    shown = batch.inputs[picked]
    masked = float((shown == 50).float().mean())
    unchanged = float((shown == clean[picked]).float().mean())
    assert abs(masked - 0.8) < 0.02
    # 10% kept plus the random replacements that drew the original token (1 in 50)
    assert abs(unchanged - (0.1 + 0.1 / 50)) < 0.015
    assert abs(1 - masked - unchanged - 0.1 * 49 / 50) < 0.015  # replaced by another token


def test_mlm_corrupts_corpus_windows(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog " * 200)
    task = get_task("mlm", path=str(text))
    assert task.vocab_size == 257 and task.mask_token == 256 and task.layout == "masked"
    clean = get_task("lm", path=str(text)).sample(4, 64, gen(3)).inputs
    batch = task.sample(4, 64, gen(3))
    assert torch.equal(torch.where(batch.scored, batch.targets, batch.inputs), clean)
    assert task.metrics(Scores(loss_sum=2.0, n_scored=2))["bpb"] == pytest.approx(1 / 0.6931, rel=1e-3)


@pytest.mark.parametrize("kw,match", [({"mask_frac": 0.0}, "mask_frac"),
                                      ({"mask_prob": 0.9, "random_prob": 0.2}, "sum <= 1")])
def test_mlm_bad_rates_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        get_task("mlm", **kw)


# --- masked_recall --------------------------------------------------------------------------

def _recall_answer(row: torch.Tensor, task: MaskedRecall) -> tuple[int, int, int]:
    """(mask position, answer, distance) from the inputs alone."""
    m = int((row == task.mask_token).nonzero())
    where = (row == task.special_token).nonzero().flatten().tolist()
    assert len(where) == 2 and where[0] == m - 1, "S appears exactly twice, just left of the mask first"
    return m, int(row[where[1] + 1]), where[1] - m


@pytest.mark.parametrize("length", [4, 5, 64, 1000])
def test_masked_recall_answer_follows_the_special_token_right_of_the_mask(length):
    task = MaskedRecall()
    batch = task.sample(64, length, gen(length))
    for row, target in zip(batch.inputs, batch.targets):
        m, answer, distance = _recall_answer(row, task)
        assert distance >= 1 and int(target[m]) == answer < task.vocab
        assert int((target != IGNORE_INDEX).sum()) == 1


def test_masked_recall_fixed_distance():
    task = MaskedRecall(trigger_distance=9)
    assert task.min_len() == 12 and task.vocab_size == 18
    batch = task.sample(32, 40, gen(0))
    assert {_recall_answer(row, task)[2] for row in batch.inputs} == {9}
    assert task.at_distance(3).trigger_distance == 3


def test_a_causal_model_cannot_see_the_answer_of_masked_recall():
    """What lies left of (and at) the mask is independent of the answer: uniform given it."""
    task = MaskedRecall(vocab=4)
    batch = task.sample(8000, 12, gen(5))
    m = (batch.inputs == task.mask_token).int().argmax(dim=1)
    rows = torch.arange(8000)
    answers = batch.targets[rows, m]
    before = batch.inputs[rows, (m - 2).clamp(min=0)]  # the token before S (filler, or S itself at q=0)
    for token in range(4):  # given the left context, each answer is as likely
        counts = torch.bincount(answers[before == token], minlength=4).float()
        assert counts.min() / counts.max() > 0.8


# --- seq2seq ----------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["reverse", "sort", "map"])
@pytest.mark.parametrize("length", [3, 4, 64, 257])
def test_seq2seq_target_recomputed_from_the_source(op, length):
    task = Seq2Seq(op=op, alphabet=7)
    batch = task.sample(16, length, gen(length))
    n = (length - 1) // 2
    sep = int((batch.inputs[0] == task.separator).nonzero()[0])
    assert sep == length - 1 - n and task.separator == task.vocab_size - 1
    pi = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    for row, target in zip(batch.inputs, batch.targets):
        source = row[sep - n:sep]
        want = {"reverse": source.flip(0), "sort": source.sort().values, "map": pi[source]}[op]
        assert torch.equal(row[sep + 1:], want)  # teacher-forced target
        assert torch.equal(target[sep:], torch.cat([want, torch.tensor([task.eos])]))
        assert bool((target[:sep] == IGNORE_INDEX).all())
        assert bool((row[:sep - n] == task.pad).all())


def test_seq2seq_map_is_a_fixed_permutation_of_its_seed():
    a, b = Seq2Seq(op="map").mapping(), Seq2Seq(op="map", mapping_seed=1).mapping()
    assert sorted(a.tolist()) == list(range(16)) and not torch.equal(a, b)
    assert torch.equal(a, Seq2Seq(op="map").mapping())
    with pytest.raises(ValueError, match="op must be one of"):
        Seq2Seq(op="shuffle")


# --- which model takes which task -------------------------------------------------------------

def _tiny(name, vocab, **kw):
    return create_arch(name, vocab_size=vocab, d_model=16, n_layers=1, **kw)


def test_check_model_refuses_unfair_combinations():
    recall, seq2seq, induction = MaskedRecall(), Seq2Seq(), get_task("induction_heads")
    bidirectional = _tiny("mamba", 17, causal=False)
    recall.check_model(bidirectional)
    recall.check_model(_tiny("mamba", 17))  # a causal model may try: it sees the left side
    with pytest.raises(ValueError, match="bidirectional mamba .*use a masked task"):
        induction.check_model(bidirectional)
    with pytest.raises(ValueError, match="bidirectional"):
        seq2seq.check_model(_tiny("transformer", 19, n_heads=2, causal=False))
    encdec = _tiny("encoder_decoder", 19, cross_heads=2, encoder_kwargs={"n_heads": 2},
                   decoder_kwargs={"n_heads": 2})
    seq2seq.check_model(encdec)
    seq2seq.check_model(_tiny("transformer", 19, n_heads=2))  # the decoder-only prefix form
    with pytest.raises(ValueError, match="needs a source, a separator and a target; use .*seq2seq"):
        recall.check_model(encdec)
    wrong = _tiny("encoder_decoder", 40, cross_heads=2, encoder_kwargs={"n_heads": 2},
                  decoder_kwargs={"n_heads": 2})
    with pytest.raises(ValueError, match="splits at token 39 but the task's separator is 18"):
        seq2seq.check_model(wrong)
