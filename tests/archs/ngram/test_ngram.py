"""The n-gram LM: interpolated Kneser-Ney by hand, normalisation, counting, decoding."""
from __future__ import annotations

import pytest
import torch

from archs import create_arch
from archs.ngram.counts import absolute_discount, continuation_counts, dense_rows, gram_keys, merge
from harness.conformance import LONG_CHECKS, SHORT_CHECKS

G = torch.Generator().manual_seed(0)
# the training text 0 1 0 1 0 2 2 as one LM window: inputs, next-token targets
SEQ = torch.tensor([[0, 1, 0, 1, 0, 2, 2]])


def _counted(order: int, discount: float | None = 0.5, vocab: int = 3, seq=SEQ):
    model = create_arch("ngram", vocab_size=vocab, order=order, discount=discount)
    model.count(seq[:, :-1], seq[:, 1:])
    return model


def test_bigram_matches_the_hand_computed_kneser_ney():
    # bigrams 01 x2, 10 x2, 02, 22; the unigram level uses continuation counts
    # N(.0)=1, N(.1)=1, N(.2)=2 -> P1 = (max(N-.5,0) + .5*3/3) / 4 = [.25, .25, .5]
    probs = _counted(order=2)(torch.tensor([[0, 1, 2]])).exp()[0]
    want = torch.tensor([[1 / 12, 7 / 12, 1 / 3],       # after 0: c = 0, 2, 1 (S 3, T 2)
                         [0.8125, 0.0625, 0.125],       # after 1: c = 2, 0, 0
                         [0.125, 0.125, 0.75]])         # after 2: c = 0, 0, 1
    torch.testing.assert_close(probs, want)


def test_trigram_matches_the_hand_computed_kneser_ney():
    # trigrams 010 x2, 101, 102, 022; bigram continuation counts from their suffixes
    # N(.10)=N(.01)=N(.02)=N(.22)=1: P2c(.|0) = [.125,.375,.5], P2c(.|1) = [.625,.125,.25],
    # P2c(.|2) = [.125,.125,.75]
    probs = _counted(order=3)(torch.tensor([[1, 0, 1, 2, 1]])).exp()[0]
    want = torch.tensor([[0.8125, 0.0625, 0.125],       # position 0: one token of history, raw bigram
                         [0.0625, 0.4375, 0.5],         # after 1 0: c = 0, 1, 1 over P2c(.|0)
                         [0.90625, 0.03125, 0.0625],    # after 0 1: c = 2, 0, 0 over P2c(.|1)
                         [0.125, 0.125, 0.75],          # after 1 2: unseen -> P2c(.|2)
                         [0.625, 0.125, 0.25]])         # after 2 1: unseen -> P2c(.|1)
    torch.testing.assert_close(probs, want)


@pytest.mark.parametrize("order", [1, 2, 3, 5])
@pytest.mark.parametrize("discount", [None, 0.3, 1.0])
def test_probabilities_sum_to_one_everywhere(order, discount):
    train = torch.randint(0, 11, (4, 60), generator=G) % torch.tensor([[3], [11], [5], [11]])
    model = _counted(order, discount, vocab=11, seq=train)
    probe = torch.cat([train[:, :30], torch.randint(0, 11, (4, 30), generator=G)], dim=1)  # seen and unseen
    probs = model(probe).exp()
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, 60), rtol=0, atol=1e-5)
    assert (probs > 0).all()


def test_untrained_model_is_uniform():
    model = create_arch("ngram", vocab_size=7, order=3)
    torch.testing.assert_close(model(torch.tensor([[1, 2, 3]])).exp(), torch.full((1, 3, 7), 1 / 7))


def test_tables_and_helpers():
    assert absolute_discount(torch.tensor([1, 1, 2, 3])) == 0.5 and absolute_discount(torch.tensor([2, 3])) == 0.5
    keys, counts = merge(torch.tensor([4, 9]), torch.tensor([2, 1]), torch.tensor([9, 1, 9]))
    assert keys.tolist() == [1, 4, 9] and counts.tolist() == [1, 2, 3]
    # bigram keys of 0 1 0 2 (V = 3): 0*3+1, 1*3+0, 0*3+2; a -100 target is not counted
    assert gram_keys(torch.tensor([[0, 1, 0]]), torch.tensor([[1, 0, 2]]), 2, 3).tolist() == [1, 3, 2]
    assert gram_keys(torch.tensor([[0, 1, 0]]), torch.tensor([[1, -100, 2]]), 2, 3).tolist() == [1, 2]
    # unigrams 1, 2 after bigrams 01, 21, 02: N(.1) = 2, N(.2) = 1
    assert continuation_counts(torch.tensor([1, 2]), torch.tensor([1, 2, 7]), 1, 3).tolist() == [2, 1]
    rows = dense_rows(torch.tensor([0, 2, 1]), torch.tensor([1, 2, 7]), torch.tensor([5, 6, 7]), 3)
    assert rows.tolist() == [[0, 5, 6], [0, 7, 0], [0, 0, 0]]


def test_counting_in_pieces_equals_counting_at_once(monkeypatch):
    import archs.ngram.model as ngram_model
    x = torch.randint(0, 9, (6, 40), generator=G)
    once = _counted(4, None, 9, x)
    monkeypatch.setattr(ngram_model, "MERGE_EVERY", 50)  # merge after every batch
    pieces = create_arch("ngram", vocab_size=9, order=4)
    for part in x.split(2):
        pieces.count(part[:, :-1], part[:, 1:])
    assert pieces.state_dict().keys() == once.state_dict().keys()
    for key, value in once.state_dict().items():
        assert torch.equal(pieces.state_dict()[key], value), key


def test_checkpoint_round_trip_resizes_the_tables():
    model = _counted(3, None, 9, torch.randint(0, 9, (3, 50), generator=G))
    fresh = create_arch("ngram", vocab_size=9, order=3)
    fresh.load_state_dict(model.state_dict())
    x = torch.randint(0, 9, (2, 20), generator=G)
    assert torch.equal(fresh(x), model(x)) and fresh.num_params() == model.num_params() > 0


def _trained(order: int = 4, vocab: int = 64):
    return _counted(order, None, vocab, torch.randint(0, vocab, (8, 400), generator=G) % 17)


@pytest.mark.parametrize("check", ["shapes", "batch_independence", "causality", "step_matches_forward",
                                   "prefill_matches_forward", "state_size"])
def test_a_counted_model_passes_the_conformance_checks(check):
    print(SHORT_CHECKS[check](_trained()))


@pytest.mark.slow
def test_a_counted_model_decodes_at_length():
    print(LONG_CHECKS["long_decode"](_trained(), lengths=(1024,)))


@torch.no_grad()
def test_long_causality_on_tokens():
    model = _trained()
    x = torch.randint(0, 64, (1, 1024), generator=G) % 17
    base = model(x)
    for cut in (3, 511, 1000):
        changed = x.clone()
        changed[:, cut + 1:] = (changed[:, cut + 1:] + 5) % 64
        assert torch.equal(model(changed)[:, : cut + 1], base[:, : cut + 1]), cut
        assert not torch.equal(model(changed)[:, cut + 1], base[:, cut + 1])


def test_state_is_the_history_plus_the_tables_it_reads():
    model = _trained(order=3)
    state = model.init_state(2)
    _, state = model.prefill(torch.randint(0, 64, (2, 30), generator=G), state)
    tables = sum(t.numel() * 8 for t in state.tables)
    assert tables > 0 and model.state_size_bytes(state) == 2 * 2 * 8 + tables == model.expected_state_bytes(2, 30)
    assert model.expected_state_bytes(2, 10_000) == model.expected_state_bytes(2, 30)  # constant in context


@pytest.mark.parametrize("kw,match", [({"order": 20}, "does not fit an int64"),
                                      ({"discount": 1.5}, r"discount must be in \(0, 1\]"),
                                      ({"d_model": 64}, "ngram has no d_model"),
                                      ({"n_layers": 2}, "ngram has no n_layers"),
                                      ({"order": 0}, "order must be a positive integer")])
def test_bad_settings_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        create_arch("ngram", **kw)
