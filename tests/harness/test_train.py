"""harness.train: training from a noise state or a passed state (train.initial_state), and
the other training options of issue 11: plain Adam, threads, keys that ignore unset options.
(The training loop and evaluation together: test_train_eval.py; resume: test_resume.py.)"""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from archs import list_archs
from harness.tasks import get_task
from harness.config import TrainConfig
from harness.train import InitialStates, check_initial_state_support, identity_settings, make_optimizer, map_state, set_threads, train

from tests.tiny import tiny_model

VOCAB = 11


def _tiny(name: str):
    return tiny_model(name, VOCAB)


def _accepts(model) -> bool:
    # a model without mixers (the count-based n-gram) has no recurrent state to start from
    return bool(model.mixers) and all(getattr(m, "accepts_initial_state", False) for m in model.mixers)


def _tensors(state) -> list[torch.Tensor]:
    out = []
    map_state(lambda t: out.append(t) or t, state)
    return out


ARCHS = list_archs()
STATEFUL = [n for n in ARCHS if _accepts(_tiny(n))]


def test_the_documented_families_accept_an_initial_state():
    assert {"mamba", "mamba2", "linear_attention", "retnet", "lstm"} <= set(STATEFUL)
    assert "transformer" not in STATEFUL


@pytest.mark.parametrize("name", STATEFUL)
def test_gradients_flow_through_prefill(name):
    model = _tiny(name).double()
    x = torch.randint(0, VOCAB, (2, 12))
    model(x).square().mean().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    logits, _ = model.prefill(x, model.init_state(2, dtype=torch.float64))
    logits.square().mean().backward()
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    # From the zero state, prefill is the forward pass: the same gradient for every parameter.
    assert got.keys() == expected.keys() and expected
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], msg=n)
    # From a noise state the gradients are finite and differ (the state enters the output).
    model.zero_grad()
    states = InitialStates(model, TrainConfig(initial_state="noise", initial_state_scale=0.5), torch.device("cpu"))
    logits, _ = model.prefill(x, states.noise(2))
    logits.square().mean().backward()
    noisy = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in noisy.values())
    assert any(not torch.allclose(noisy[n], expected[n]) for n in expected)


@pytest.mark.parametrize("name", STATEFUL)
def test_state_passing_carries_the_final_state_exactly(name):
    model = _tiny(name).double()
    cfg = TrainConfig(initial_state="passed", steps=2, warmup_steps=0)
    states = InitialStates(model, cfg, torch.device("cpu"))
    a, b = torch.randint(0, VOCAB, (2, 2, 10))
    targets = torch.randint(0, VOCAB, (2, 10))
    states.loss(a, targets, None, 0.0)  # batch 1 starts from zero
    carried = states.start(2)
    _, expected = model.prefill(a, model.init_state(2, dtype=torch.float64))
    for got, want in zip(_tensors(carried), _tensors(expected), strict=True):
        assert torch.equal(got, want.detach())
        assert not got.requires_grad
    assert carried.pos == 0
    # Batch 2 continues batch 1: its loss is that of the second half of the joined sequence.
    _, loss = states.loss(b, targets, None, 0.0)
    joined = model(torch.cat([a, b], dim=1))[:, 10:]
    want = F.cross_entropy(joined.float().flatten(0, 1), targets.flatten())
    torch.testing.assert_close(loss, want)


def test_noise_state_has_the_declared_scale():
    model = _tiny("mamba")
    for scale in (0.1, 2.0):
        states = InitialStates(model, TrainConfig(initial_state="noise", initial_state_scale=scale),
                               torch.device("cpu"))
        state = states.noise(64)
        zero = model.init_state(64)
        tensors, reference = _tensors(state), _tensors(zero)
        assert [(t.shape, t.dtype) for t in tensors] == [(t.shape, t.dtype) for t in reference]
        values = torch.cat([t.float().flatten() for t in tensors])
        assert values.numel() > 10_000
        assert abs(values.std().item() - scale) < 0.03 * scale
        assert abs(values.mean().item()) < 0.03 * scale
        # Fresh noise every batch.
        assert not torch.equal(_tensors(states.noise(64))[0], tensors[0])


@pytest.mark.parametrize("name", sorted(set(ARCHS) - set(STATEFUL)))
def test_mixers_without_an_initial_state_are_refused_clearly(name):
    model = _tiny(name)
    lacking = sorted({type(m).__name__ for m in model.mixers if not getattr(m, "accepts_initial_state", False)})
    named = lacking[0] if lacking else "lacks them"  # no mixers at all: a count-based model
    for mode in ("noise", "passed"):
        with pytest.raises(ValueError, match=rf"train.initial_state='{mode}'.*{named}.*"
                                             r"Use train.initial_state=zero"):
            check_initial_state_support(model, mode)


def test_training_refuses_before_any_step():
    model = _tiny("transformer")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="do not accept one"):
        train(model, get_task("induction_heads", vocab=8), TrainConfig(steps=2, batch_size=2, seq_len=16,
              warmup_steps=0, initial_state="noise"), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("mode", ["noise", "passed"])
def test_training_runs_from_initial_states(mode):
    model = _tiny("lstm")
    cfg = TrainConfig(steps=3, batch_size=4, seq_len=16, warmup_steps=0, initial_state=mode,
                      initial_state_scale=0.3)
    result = train(model, get_task("induction_heads", vocab=8), cfg, progress=False)
    assert result.status == "ok" and result.steps_done == 3
    # Different starting states give a different first loss than the zero state.
    zero = train(_tiny("lstm"), get_task("induction_heads", vocab=8),
                 dataclasses.replace(cfg, initial_state="zero"), progress=False)
    if mode == "noise":
        assert result.history[0]["loss"] != zero.history[0]["loss"]
    else:  # the first batch starts from zero either way
        assert result.history[0]["loss"] == zero.history[0]["loss"]


def test_train_config_validates_the_new_options():
    with pytest.raises(ValueError, match="train.initial_state must be one of"):
        TrainConfig(initial_state="random")
    with pytest.raises(ValueError, match="initial_state_scale must be > 0"):
        TrainConfig(initial_state="noise", initial_state_scale=0)
    with pytest.raises(ValueError, match="set train.weight_decay=0"):
        TrainConfig(optimizer="adam", weight_decay=0.1)
    with pytest.raises(ValueError, match="train.optimizer must be one of"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="train.threads must be >= 1"):
        TrainConfig(threads=0)


def test_plain_adam_has_no_decay():
    model = _tiny("mamba")
    opt = make_optimizer(model, TrainConfig(optimizer="adam", weight_decay=0.0, beta2=0.999))
    assert type(opt) is torch.optim.Adam
    assert all(g["weight_decay"] == 0 for g in opt.param_groups)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)


def test_threads_are_set():
    before = torch.get_num_threads()
    try:
        set_threads(2)
        assert torch.get_num_threads() == 2
        set_threads(None)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_identity_ignores_new_options_at_their_defaults():
    base = dataclasses.asdict(TrainConfig())
    ident = identity_settings(base)
    assert not {"optimizer", "initial_state", "initial_state_scale", "threads"} & ident.keys()
    assert identity_settings({**base, "threads": 1}) == ident
    changed = identity_settings({**base, "optimizer": "adam", "weight_decay": 0.0,
                                 "initial_state": "noise", "initial_state_scale": 0.5})
    assert changed["optimizer"] == "adam" and changed["initial_state"] == "noise"
    assert changed["initial_state_scale"] == 0.5
    assert "initial_state_scale" not in identity_settings({**base, "initial_state": "passed",
                                                           "initial_state_scale": 0.5})


@pytest.mark.slow
def test_committed_results_keep_their_training_keys(tmp_path):
    # The new TrainConfig fields and task knob stay out of the key at their defaults, so
    # the committed checkpoints and rows are still found by a re-run.
    from harness import extrapolate
    from harness.results import load_rows
    from tests.apps import compose
    from tests.paths import ROOT

    committed = ROOT / "results" / "cpu" / "extrapolation" / "induction"
    if not committed.is_dir():
        pytest.skip("no committed induction results in this checkout")
    rows = load_rows(committed)
    cfg = compose("extrapolate", "experiment=induction_extrapolation", "arch=induction/mamba", "train.seed=0",
                  f"results_dir={tmp_path}")
    experiment = extrapolate.Experiment(extrapolate._as_schema(cfg))
    mine = rows[(rows["label"] == "mamba") & (rows["seed"] == 0)]
    # The key now also hashes the model's and task's source code (issue 10): leave that part
    # out, and what remains - the settings - must hash to the committed key.
    from harness.results import config_hash
    settings = {k: v for k, v in experiment.train_settings.items() if k != "code"}
    assert "code" in experiment.train_settings
    assert len(mine) and set(mine["train_key"]) == {config_hash(settings)}
