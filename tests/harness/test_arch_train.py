"""`arch.train`: an architecture's own training options, merged over `train`, so one
multirun over architectures can train each its own way (the demo: one Mamba with state
passing, attention - which has no recurrent state to pass on - as usual)."""
from __future__ import annotations

import dataclasses

import pytest
from omegaconf import open_dict

from harness import cost, extrapolate
from harness.build import build, split_arch

from tests.apps import EXTRAP_SMOKE, compose


def _with_arch_train(raw, train):
    with open_dict(raw):  # a composed config is closed to new keys (`+arch.train...` on the CLI)
        raw.arch["train"] = train
    return raw


_UNSET = object()


def _schema(overrides, train=_UNSET):
    raw = compose("extrapolate", *overrides)
    if train is not _UNSET:
        _with_arch_train(raw, train)
    return extrapolate._as_schema(raw)


@pytest.mark.slow
def test_arch_train_goes_over_train_and_leaves_the_arch_node():
    cfg = _schema(["arch=mamba", "train.steps=400"], train={"initial_state": "noise", "lr": 0.002})
    assert cfg.train.initial_state == "noise" and cfg.train.lr == 0.002  # the arch's values
    assert cfg.train.steps == 400                                         # the rest is `train`'s
    assert "train" not in cfg.arch
    assert split_arch(cfg.arch)[0] == "mamba"
    # idempotent: an already-merged config is returned as it is
    assert extrapolate._as_schema(cfg) is cfg
    # an ExtrapolateConfig built in code takes arch.train the same way
    built = extrapolate._as_schema(dataclasses.replace(cfg, arch={**cfg.arch, "train": {"batch_size": 16}}))
    assert built.train.batch_size == 16 and built.train.initial_state == "noise" and "train" not in built.arch
    # an empty `train:` block in an arch file changes nothing
    empty = _schema(["arch=mamba", "train.steps=400"], train=None)
    assert empty.train == _schema(["arch=mamba", "train.steps=400"]).train and "train" not in empty.arch


@pytest.mark.parametrize("train, match", [
    ({"initial_stat": "noise"}, r"arch\.train\.initial_stat \(did you mean arch\.train\.initial_state\?\)"),
    ({"steps": "many"}, r"arch\.train\.steps: .*'many'"),
    ({"mixed_length": "sometimes"}, r"arch\.train\.mixed_length: "),
    ({"initial_state": "sideways"}, r"arch\.train.*initial_state must be one of"),
    ({"warmup_steps": 5000}, r"arch\.train.*warmup_steps must be in"),
    ("noise", r"arch\.train must be a mapping"),
])
def test_a_bad_arch_train_is_refused_naming_the_key(train, match):
    with pytest.raises(ValueError, match=match):
        _schema(["arch=mamba"], train=train)


@pytest.mark.parametrize("overrides, match", [
    (["arch=induction/mamba_noise_state", "train.initial_state_scale=2.0"],
     r"train\.initial_state_scale=2\.0 vs arch\.train\.initial_state_scale=1\.0"),
    (["experiment=length_generalisation", "arch=induction/mamba_state_passing", "lengen=noise_state"],
     r"train\.initial_state='noise' vs arch\.train\.initial_state='passed'"),
])
def test_a_train_value_the_arch_would_override_is_refused(overrides, match):
    # set on the command line or by a lengen variant, it would be silently ignored
    with pytest.raises(ValueError, match=match):
        _schema(overrides)


@pytest.mark.slow
def test_the_same_value_in_both_places_is_no_conflict():
    cfg = _schema(["experiment=length_generalisation", "arch=induction/mamba_noise_state", "lengen=noise_state"])
    assert cfg.train.initial_state == "noise"
    # and the way to change it
    cfg = _schema(["arch=induction/mamba_noise_state", "arch.train.initial_state_scale=2.0"])
    assert cfg.train.initial_state_scale == 2.0


def test_interpolations_of_train_see_the_architectures_value():
    # the learned position table is sized ${train.seq_len}: it must be the length trained at
    cfg = _schema(["arch=transformer_learned", "train.steps=400"], train={"seq_len": 512})
    assert cfg.train.seq_len == 512 and cfg.arch["max_seq_len"] == 512


@pytest.mark.slow
def test_arch_train_shapes_the_run_identity_and_the_rows(tmp_path):
    common = [*EXTRAP_SMOKE, "arch=lstm", f"results_dir={tmp_path / 'res'}",
              f"checkpoint_dir={tmp_path / 'ckpt'}"]
    plain = extrapolate.run(compose("extrapolate", *common))
    noisy = extrapolate.run(_with_arch_train(compose("extrapolate", *common),
                                             {"initial_state": "noise", "initial_state_scale": 0.5}))
    assert set(plain["train_initial_state"]) == {"zero"}
    assert set(noisy["train_initial_state"]) == {"noise"} and set(noisy["train_initial_state_scale"]) == {0.5}
    # a different training run: its own checkpoint, not the plain one's weights
    assert set(plain["train_key"]).isdisjoint(noisy["train_key"])
    assert len(list((tmp_path / "ckpt").glob("*.pt"))) == 2


@pytest.mark.slow
def test_arch_train_reaches_a_run_the_way_train_would(tmp_path):
    # the same options given as arch.train or as train.* train the same model
    common = [*EXTRAP_SMOKE, "arch=lstm", f"checkpoint_dir={tmp_path / 'ckpt'}"]
    via_train = extrapolate.run(compose("extrapolate", *common, f"results_dir={tmp_path / 'a'}",
                                        "train.initial_state=noise"))
    via_arch = extrapolate.run(_with_arch_train(compose("extrapolate", *common,
                                                        f"results_dir={tmp_path / 'b'}"),
                                                {"initial_state": "noise"}))
    assert list(via_train["train_key"]) == list(via_arch["train_key"])
    assert via_train.set_index("eval_seq_len")["loss"].equals(via_arch.set_index("eval_seq_len")["loss"])


@pytest.mark.slow
def test_the_demo_trains_one_mamba_with_state_passing_and_the_rest_as_usual():
    sweep = compose("extrapolate", "experiment=demo_extrapolation", hydra_config=True)
    options = str(sweep.hydra.sweeper.params["arch"]).split(",")
    modes = {}
    for option in options:
        cfg = _schema(["experiment=demo_extrapolation", f"arch={option}"])
        build(cfg.arch, cfg.model, 16, validate_only=True)
        modes[split_arch(cfg.arch)[1]] = cfg.train.initial_state
    assert modes == {"transformer_rope": "zero", "transformer_alibi": "zero", "jamba": "zero", "mamba": "zero",
                     "mamba+state_passing": "passed"}


@pytest.mark.slow
def test_a_cost_sweep_ignores_arch_train():
    raw = compose("cost", "arch=induction/mamba_noise_state")
    assert raw.arch.train.initial_state == "noise"
    cfg = cost._as_schema(raw)
    built = build(cfg.arch, cfg.model, 256, validate_only=True)
    assert built.name == "mamba" and "train" not in built.kwargs
