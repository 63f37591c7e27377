"""The issue-11 experiments: induction_paper (the reproduction's protocol) and
length_generalisation (one factor at a time, conf/lengen/), and the Mamba init options."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from archs import create_arch
from harness import extrapolate
from harness.build import build
from harness.config import to_container
from harness.tasks import get_task

from tests.apps import compose
from tests.configs import group_options

VARIANTS = group_options("lengen")
ARCH_SPECIFIC = {"dt_long": ("induction/mamba", "induction/mamba2"), "out_proj_scaled": ("induction/mamba",)}
ALL_ARCHS = ("induction/mamba", "induction/mamba2", "induction/lstm")


@pytest.mark.slow
def test_induction_paper_is_the_reproductions_protocol():
    raw = compose("extrapolate", "experiment=induction_paper", hydra_config=True)
    assert str(raw.hydra.sweeper.params["train.seed"]).split(",") == ["0", "1", "2"]
    cfg = extrapolate._as_schema(compose("extrapolate", "experiment=induction_paper"))
    t = cfg.train
    assert (t.seq_len, t.mixed_length, t.steps, t.batch_size) == (256, False, 40000, 8)
    assert (t.optimizer, t.lr, t.weight_decay, t.schedule, t.warmup_steps, t.grad_clip) == \
        ("adam", 1e-3, 0.0, "constant", 0, 0.0)
    assert (t.beta1, t.beta2, t.target_acc, t.threads) == (0.9, 0.999, None, 1)
    assert t.steps * t.batch_size * t.seq_len == 81_920_000  # the ~82M tokens of issue #62's run
    task = get_task(**to_container(cfg.task))
    assert task.params() == {"name": "induction_heads", "vocab": 16, "trigger_frac": 1.0, "trigger_distance": 249}
    built = build(cfg.arch, cfg.model, task.vocab_size, validate_only=True)
    assert (built.name, built.kwargs["d_model"], built.kwargs["n_layers"], built.kwargs["vocab_size"]) == \
        ("mamba", 64, 2, 17)
    assert all(n >= task.min_len() for n in cfg.eval.seq_lens)


@pytest.mark.slow
def test_induction_paper_smoke_runs(tmp_path):
    rows = extrapolate.run(compose("extrapolate", "experiment=induction_paper", "train.steps=3",
                                   "train.seq_len=64", "task.trigger_distance=40", "eval.seq_lens=[64,128]",
                                   "eval.trigger_distances=[63,100]", "eval.n_sequences=4",
                                   "model.d_model=16", "progress=false", f"results_dir={tmp_path / 'res'}",
                                   "checkpoint_dir=null"))
    assert (rows["status"] == "ok").all() and (rows["train_optimizer"] == "adam").all()
    assert (rows["train_trigger_distance"] == 40).all() and (rows["train_steps"] == 3).all()
    assert sorted(rows["trigger_distance"].fillna(-1).astype(int)) == [-1, -1, 63, 63, 100]


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_composes_for_its_architectures(variant):
    for arch in ALL_ARCHS:
        overrides = ["experiment=length_generalisation", f"lengen={variant}", f"arch={arch}"]
        cfg = extrapolate._as_schema(compose("extrapolate", *overrides))
        task = get_task(**to_container(cfg.task))
        if arch in ARCH_SPECIFIC.get(variant, ALL_ARCHS):
            built = build(cfg.arch, cfg.model, task.vocab_size, validate_only=True)
            assert built.label == f"{arch.split('/')[1]}+{variant}"
            assert cfg.experiment == "length_generalisation"
            assert all(n >= task.min_len() for n in cfg.eval.seq_lens)
        else:
            with pytest.raises(TypeError, match="unknown keyword"):
                build(cfg.arch, cfg.model, task.vocab_size, validate_only=True)


@pytest.mark.slow
def test_variants_change_one_factor_from_the_baseline():
    def settings(variant):
        cfg = extrapolate._as_schema(compose("extrapolate", "experiment=length_generalisation",
                                             f"lengen={variant}", "arch=induction/mamba"))
        arch = {k: v for k, v in cfg.arch.items() if k != "label"}
        return {**to_container(cfg.task), **{f"train.{k}": v for k, v in vars(cfg.train).items()},
                **{f"arch.{k}": v for k, v in arch.items()}}

    base = settings("baseline")
    assert (base["train.steps"], base["train.mixed_length"], base["train.initial_state"]) == (2000, True, "zero")
    changed = {}
    for v in VARIANTS:
        if v not in ("baseline", "paper_protocol", "paper_random_trigger"):
            s = settings(v)
            changed[v] = {k for k in s.keys() | base.keys() if s.get(k) != base.get(k)}
    assert changed == {
        "fixed_length": {"train.mixed_length"}, "steps_4x": {"train.steps"}, "steps_paper": {"train.steps"},
        "trigger_early": {"trigger_distance", "train.mixed_length"},
        "noise_state": {"train.initial_state"}, "state_passing": {"train.initial_state"},
        "dt_long": {"arch.dt_min", "arch.dt_max"}, "out_proj_scaled": {"arch.rescale_out_proj"},
    }
    # the paper protocol's ablation differs from it in the placement (and its shorter budget) only
    paper, ablation = settings("paper_protocol"), settings("paper_random_trigger")
    assert {k for k in paper.keys() | ablation.keys() if paper.get(k) != ablation.get(k)} == \
        {"trigger_distance", "train.steps"}


@pytest.mark.slow
def test_a_state_passing_variant_runs(tmp_path):
    rows = extrapolate.run(compose("extrapolate", "experiment=length_generalisation", "lengen=state_passing",
                                   "arch=induction/lstm", "train.steps=3", "train.seq_len=32",
                                   "train.warmup_steps=1", "eval.seq_lens=[32,64]",
                                   "eval.trigger_distances=[31]", "eval.n_sequences=4", "model.d_model=16",
                                   "progress=false", f"results_dir={tmp_path / 'res'}",
                                   "checkpoint_dir=null"))
    assert (rows["status"] == "ok").all() and (rows["train_initial_state"] == "passed").all()
    assert set(rows["label"]) == {"lstm+state_passing"} and len(rows) == 4


def test_mamba_out_proj_rescaling_matches_mamba_ssm():
    kw = dict(vocab_size=9, d_model=16, d_state=4, n_layers=3)
    torch.manual_seed(0)
    plain = create_arch("mamba", **kw)
    torch.manual_seed(0)
    scaled = create_arch("mamba", rescale_out_proj=True, **kw)
    for a, b in zip(plain.mixers, scaled.mixers):
        torch.testing.assert_close(b.out_proj.weight, a.out_proj.weight / math.sqrt(3))
        torch.testing.assert_close(b.in_proj.weight, a.in_proj.weight)
    torch.manual_seed(0)
    with_mlp = create_arch("mamba", rescale_out_proj=True, mlp="swiglu", **kw)
    torch.testing.assert_close(with_mlp.mixers[0].out_proj.weight, plain.mixers[0].out_proj.weight / math.sqrt(6))


@pytest.mark.parametrize("name,kw", [("mamba", dict(d_state=4)), ("mamba2", dict(headdim=8, d_state=8))])
def test_dt_init_range_is_configurable(name, kw):
    model = create_arch(name, vocab_size=9, d_model=32, dt_min=1e-4, dt_max=2e-4, **kw)
    for mixer in model.mixers:
        bias = mixer.dt_proj.bias if name == "mamba" else mixer.dt_bias
        dt = F.softplus(bias.float())
        assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 2e-4 * 1.001
