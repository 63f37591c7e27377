"""Tests of the task interface and the synthetic tasks.

Every answer is recomputed here from the inputs alone, independently of the generators,
so a generator that scores the wrong position or the wrong token fails.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from harness.tasks import (
    IGNORE_INDEX,
    MQAR,
    Batch,
    Copying,
    InductionHeads,
    Passkey,
    Scores,
    SelectiveCopy,
    Task,
    get_task,
    list_tasks,
    register_task,
    score_logits,
)

from tests.tiny import gen


@pytest.fixture(scope="session")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~200 kB of word-like text: enough for 2^14-token eval windows, instant to build."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 8))) for _ in range(500)]
    path = tmp_path_factory.mktemp("text") / "tiny.txt"
    path.write_text(" ".join(rng.choice(words) for _ in range(40_000)))
    return path


@pytest.fixture
def make_task(text_file: Path):
    """Build any registered task with its defaults; the LM reads the small temp text."""

    def make(name: str, **kwargs) -> Task:
        if name == "lm":
            kwargs.setdefault("path", str(text_file))
        return get_task(name, **kwargs)

    return make


ALL = list_tasks()


# ------------------------------------------------------------------ every task, same contract


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_batch_other_seed_differs(make_task, name):
    task = make_task(name)
    length = max(task.min_len(), 64)
    a, b, c = (task.sample(4, length, gen(s)) for s in (7, 7, 8))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


@pytest.mark.parametrize("name", ALL)
def test_shapes_dtypes_and_tokens_in_vocab(make_task, name):
    task = make_task(name)
    batch = task.sample(3, task.default_seq_len, gen(0))
    for t in (batch.inputs, batch.targets):
        assert t.shape == (3, task.default_seq_len) and t.dtype == torch.long
    assert 0 <= int(batch.inputs.min()) and int(batch.inputs.max()) < task.vocab_size
    scored = batch.targets[batch.scored]
    assert 0 <= int(scored.min()) and int(scored.max()) < task.vocab_size
    assert bool(batch.scored.any(dim=1).all()), "every sequence must score something"


@pytest.mark.parametrize("name", ALL)
def test_every_length_from_min_len_to_2_pow_14(make_task, name):
    task = make_task(name)
    powers = (2**k for k in range(4, 15) if 2**k >= task.min_len())
    lengths = sorted({task.min_len(), task.min_len() + 1, *powers})
    for length in lengths:
        batch = task.sample(2, length, gen(length))
        assert batch.inputs.shape == batch.targets.shape == (2, length)
        assert batch.num_scored >= 2


@pytest.mark.parametrize("name", ALL)
def test_too_short_names_both_lengths_and_the_fix(make_task, name):
    task = make_task(name)
    short = task.min_len() - 1
    message = rf"seq_len={short} is shorter than min_len={task.min_len()}.*use seq_len >="
    with pytest.raises(ValueError, match=message):
        task.sample(2, short, gen(0))


@pytest.mark.parametrize("name", ALL)
def test_bad_requests_are_clear_errors(make_task, name):
    task = make_task(name)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        task.sample(0, 64, gen(0))
    with pytest.raises(TypeError, match="torch.Generator"):
        task.sample(2, 64, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="split must be one of"):
        task.sample(2, 64, gen(0), split="test")


@pytest.mark.parametrize("name", ALL)
def test_params_rebuild_the_same_task(make_task, name):
    task = make_task(name)
    params = task.params()
    assert params.pop("name") == name
    assert get_task(name, **params) == task


# ------------------------------------------------------------------ registry


def test_unknown_task_lists_known_names():
    with pytest.raises(ValueError, match="unknown task 'inductoin'; known tasks: .*induction_heads.*mqar"):
        get_task("inductoin")


def test_a_hydra_task_node_builds_the_task():
    from omegaconf import OmegaConf

    node = OmegaConf.create({"name": "passkey", "depth": None, "n_digits": 7})
    assert get_task(**node) == Passkey(depth=None, n_digits=7)


def test_unknown_parameter_lists_valid_ones():
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['num_pairs'\].*num_kv_pairs"):
        get_task("mqar", num_pairs=4)


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="already registered"):

        @register_task("mqar")
        @dataclass
        class Other(MQAR):
            pass


# ------------------------------------------------------------------ induction heads


@pytest.mark.parametrize("length", [3, 4, 17, 256, 4096])
def test_induction_answer_follows_the_earlier_special_token(length):
    task = InductionHeads()
    batch = task.sample(16, length, gen(length))
    for x, y in zip(batch.inputs.tolist(), batch.targets.tolist()):
        specials = [i for i, tok in enumerate(x) if tok == task.special_token]
        assert len(specials) == 2 and specials[1] == length - 1
        first = specials[0]
        assert first + 1 < length - 1, "the answer must precede the final query"
        assert y[-1] == x[first + 1]
        assert all(t == IGNORE_INDEX for t in y[:-1])


def test_induction_trigger_frac_bounds_the_first_special_token():
    task = InductionHeads(trigger_frac=0.25)
    batch = task.sample(256, 1000, gen(1))
    first = (batch.inputs[:, :-1] == task.special_token).int().argmax(dim=1)
    assert int(first.max()) < 0.25 * 998
    assert int(first.max()) > 0.2 * 998  # uses the whole allowed range


# ------------------------------------------------------------------ selective copying


@pytest.mark.parametrize("length", [32, 33, 100, 4096])
def test_selective_copy_answers_are_the_data_tokens_in_order(length):
    task = SelectiveCopy()
    batch = task.sample(8, length, gen(length))
    n = task.n_data
    for x, y in zip(batch.inputs.tolist(), batch.targets.tolist()):
        body, tail = x[: length - n], x[length - n :]
        data = [tok for tok in body if tok != SelectiveCopy.NOISE]
        assert len(data) == n and all(1 <= tok <= task.data_vocab for tok in data)
        assert tail == [task.marker_token] * n
        assert y[length - n :] == data
        assert all(t == IGNORE_INDEX for t in y[: length - n])


def test_selective_copy_positions_are_spread():
    task = SelectiveCopy(n_data=4)
    batch = task.sample(64, 1004, gen(0))
    places = (batch.inputs[:, :1000] != SelectiveCopy.NOISE).nonzero()[:, 1]
    assert int(places.min()) < 100 and int(places.max()) > 900


# ------------------------------------------------------------------ MQAR


def check_mqar(task: MQAR, batch: Batch) -> list[list[int]]:
    """Recompute every answer from the key–value prefix; return the query slots used."""
    n, half = task.num_kv_pairs, task.vocab_size // 2
    slots = []
    for x, y in zip(batch.inputs.tolist(), batch.targets.tolist()):
        keys, values = x[0 : 2 * n : 2], x[1 : 2 * n : 2]
        assert len(set(keys)) == n and all(1 <= k < half for k in keys)
        assert len(set(values)) == n and all(half <= v < task.vocab_size for v in values)
        table = dict(zip(keys, values))
        scored = [i for i, t in enumerate(y) if t != IGNORE_INDEX]
        assert len(scored) == task.queries
        asked = [x[i] for i in scored]
        assert len(set(asked)) == len(asked), "each key is queried once"
        for i in scored:
            assert i >= 2 * n and (i - 2 * n) % 2 == 0, "queries sit at the start of a slot"
            assert y[i] == table[x[i]]
        slots.append([(i - 2 * n) // 2 for i in scored])
    return slots


@pytest.mark.parametrize("length", [16, 17, 64, 1024])
def test_mqar_targets_are_the_queried_keys_values(length):
    task = MQAR(vocab_size=64, num_kv_pairs=4)
    check_mqar(task, task.sample(32, length, gen(length)))


def test_mqar_subset_of_queries_and_zero_noise():
    task = MQAR(vocab_size=64, num_kv_pairs=6, num_queries=2, noise="zero")
    batch = task.sample(32, 64, gen(3))
    check_mqar(task, batch)
    rest = batch.inputs[:, 12:].masked_fill(batch.scored[:, 12:], 0)
    assert int(rest.abs().sum()) == 0, "zero noise leaves only the queries after the pairs"


def test_mqar_power_law_puts_queries_early_uniform_spreads_them():
    mean = {}
    for power_a in (0.01, 1.0):
        task = MQAR(vocab_size=64, num_kv_pairs=8, power_a=power_a)
        slots = check_mqar(task, task.sample(64, 1040, gen(0)))
        mean[power_a] = sum(map(sum, slots)) / sum(map(len, slots))
    # 512 slots: uniform has mean ~255; p(i) ∝ i^-0.99 has a far smaller mean.
    assert 200 < mean[1.0] < 310
    assert mean[0.01] < 0.6 * mean[1.0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(vocab_size=16, num_kv_pairs=8), "gives only 7 distinct keys .* use vocab_size >= 18"),
        (dict(vocab_size=64, num_kv_pairs=4, num_queries=5), "num_queries must be in 1 .. num_kv_pairs=4"),
        (dict(power_a=0.0), "power_a must be > 0"),
        (dict(noise="gaussian"), "noise must be one of"),
        (dict(num_kv_pairs=0), "num_kv_pairs must be >= 1"),
    ],
)
def test_mqar_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MQAR(**kwargs)


def test_mqar_more_pairs_than_fit_names_the_parameter_to_reduce():
    task = MQAR(vocab_size=8192, num_kv_pairs=64)
    with pytest.raises(ValueError, match="shorter than min_len=256.*reduce num_kv_pairs"):
        task.sample(2, 200, gen(0))


# ------------------------------------------------------------------ passkey


def check_passkey(task: Passkey, batch: Batch) -> list[int]:
    """Find the needle, check the scored digits are its digits; return needle starts."""
    n, length = task.n_digits, batch.inputs.shape[1]
    starts = []
    for x, y in zip(batch.inputs.tolist(), batch.targets.tolist()):
        hay = x[: length - n]
        assert hay.count(Passkey.KEY) == 1 and Passkey.QUERY not in hay
        k = hay.index(Passkey.KEY)
        digits = hay[k + 1 : k + 1 + n]
        assert all(0 <= d <= 9 for d in digits)
        assert x[length - n :] == [Passkey.QUERY, *digits[:-1]]
        assert y[length - n :] == digits and all(t == IGNORE_INDEX for t in y[: length - n])
        starts.append(k)
    return starts


@pytest.mark.parametrize("length", [11, 12, 100, 8192])
def test_passkey_answer_is_the_hidden_number(length):
    task = Passkey()
    check_passkey(task, task.sample(16, length, gen(length)))


def test_passkey_depth_places_the_needle():
    length, n = 1000, 5
    last = length - n - (n + 1)  # the latest start that still fits the needle

    def starts(depth: float | None, batch: int = 4) -> list[int]:
        task = Passkey(depth=depth)
        return check_passkey(task, task.sample(batch, length, gen(0)))

    assert starts(0.0) == [0] * 4
    assert starts(1.0) == [last] * 4
    assert starts(0.5) == [round(0.5 * last)] * 4
    spread = starts(None, batch=64)
    assert min(spread) < 0.2 * last and max(spread) > 0.8 * last


def test_passkey_pattern_filler_is_fixed_random_filler_is_not():
    outside = slice(0, 400)  # depth=1.0 keeps the needle far from here
    fixed = [Passkey(depth=1.0).sample(2, 1000, gen(s)).inputs[:, outside] for s in (0, 1)]
    assert torch.equal(fixed[0], fixed[1]) and torch.equal(fixed[0][0], fixed[0][1])
    noisy = Passkey(depth=1.0, filler="random").sample(2, 1000, gen(0)).inputs[:, outside]
    assert not torch.equal(noisy[0], noisy[1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(depth=1.5), "depth must be in"),
        (dict(filler="lorem"), "filler must be one of"),
        (dict(n_digits=0), "n_digits"),
    ],
)
def test_passkey_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Passkey(**kwargs)


# ------------------------------------------------------------------ copying


@pytest.mark.parametrize("length", [4, 5, 64, 257, 4096])
def test_copy_targets_repeat_the_string_then_end(length):
    task = Copying()
    batch = task.sample(8, length, gen(length))
    for x, y in zip(batch.inputs.tolist(), batch.targets.tolist()):
        b, c = x.index(task.bos), x.index(task.copy_token)
        assert all(tok == task.pad for tok in x[:b]) and b == length % 2
        string = x[b + 1 : c]
        assert len(string) == (length - 2) // 2 and all(0 <= s < task.alphabet for s in string)
        assert x[c + 1 :] == string, "the copy half is fed back"
        assert y[c:] == [*string, task.eos]
        assert all(t == IGNORE_INDEX for t in y[:c])


def test_bad_parameters_of_other_tasks():
    with pytest.raises(ValueError, match="trigger_frac must be in"):
        InductionHeads(trigger_frac=0.0)
    with pytest.raises(ValueError, match="n_data must be >= 1"):
        SelectiveCopy(n_data=0)
    with pytest.raises(ValueError, match="alphabet must be >= 2"):
        Copying(alphabet=1)
    with pytest.raises(ValueError, match="shorter than min_len=40.*reduce n_data"):
        SelectiveCopy(n_data=20).sample(1, 39, gen(0))


# ------------------------------------------------------------------ scores


def one_hot_logits(targets: torch.Tensor, vocab: int) -> torch.Tensor:
    """Logits whose argmax is the target wherever scored (token 0 elsewhere)."""
    return torch.nn.functional.one_hot(targets.clamp(min=0), vocab).float() * 10.0


def test_scores_perfect_then_one_wrong_then_unscored_change():
    task = SelectiveCopy(n_data=4)
    batch = task.sample(5, 40, gen(0))
    logits = one_hot_logits(batch.targets, task.vocab_size)
    perfect = score_logits(logits, batch.targets)
    assert (perfect.n_scored, perfect.acc, perfect.seq_acc) == (20, 1.0, 1.0)

    unscored = logits.clone()
    unscored[0, 0] = torch.randn(task.vocab_size)  # position 0 is never scored here
    assert score_logits(unscored, batch.targets) == perfect

    wrong = logits.clone()
    bad = (int(batch.targets[0, -1]) + 1) % task.vocab_size
    wrong[0, -1] = one_hot_logits(torch.tensor(bad), task.vocab_size)
    s = score_logits(wrong, batch.targets)
    assert s.n_correct == 19 and s.seq_acc == 4 / 5


def test_uniform_logits_cost_log_vocab_and_scores_merge():
    task = InductionHeads()
    batch = task.sample(4, 32, gen(0))
    s = score_logits(torch.zeros(4, 32, task.vocab_size), batch.targets)
    assert math.isclose(s.loss, math.log(task.vocab_size), rel_tol=1e-6)
    both = s + s
    assert (both.n_scored, both.n_seq) == (8, 8) and math.isclose(both.loss, s.loss)
    assert set(task.metrics(both)) == {"loss", "acc", "seq_acc"}
    assert math.isnan(Scores().acc)


def test_score_logits_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match=r"expected logits \(B, L, V\)"):
        score_logits(torch.zeros(2, 5, 3), torch.zeros(2, 4, dtype=torch.long))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["induction_heads", "selective_copy", "mqar", "passkey", "copy"])
def test_cuda_generator_samples_on_the_gpu(name):
    task = get_task(name)
    g = torch.Generator(device="cuda").manual_seed(0)
    batch = task.sample(4, 4096, g)
    assert batch.inputs.is_cuda and batch.targets.is_cuda
