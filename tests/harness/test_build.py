"""harness.build: an ``arch`` node plus the ``model`` sizing config -> a model, sized the same
way for both apps (matched parameters, a fixed width, the arch file's own width), with its
identity independent of whether a config restates a default."""
from __future__ import annotations

import pytest

from archs.sizing import param_count
from harness.build import build, split_arch
from harness.config import ModelConfig

VOCAB = 64


def test_split_arch_takes_the_run_keys_out_and_needs_a_name():
    name, label, kwargs = split_arch({"name": "mamba", "label": "mamba+x", "train": {"lr": 1.0}, "d_state": 4})
    assert (name, label, kwargs) == ("mamba", "mamba+x", {"d_state": 4})
    assert split_arch({"name": "lstm"})[1] == "lstm"  # no label: the registry name
    with pytest.raises(ValueError, match="needs `name:`"):
        split_arch({"d_model": 8})


@pytest.mark.parametrize("name", ["transformer", "mamba", "lstm"])
def test_matched_parameters_land_near_the_target_and_are_recorded(name):
    target = 30_000
    built = build({"name": name}, ModelConfig(target_params=target, n_layers=1), VOCAB)
    assert abs(param_count(built.model) - target) / target < 0.15
    assert built.sizing == {"match": "params", "target": target}
    assert built.kwargs["vocab_size"] == VOCAB and built.kwargs["n_layers"] == 1


def test_widths_come_from_the_arch_file_then_the_per_arch_table_then_model_d_model():
    m = ModelConfig(match="width", d_model=24, d_model_by_arch={"mamba": 16}, n_layers=1)
    assert build({"name": "lstm"}, m, VOCAB).kwargs["d_model"] == 24
    by_arch = build({"name": "mamba"}, m, VOCAB)
    assert by_arch.kwargs["d_model"] == 16 and by_arch.sizing["match"] == "d_model_by_arch"
    own = build({"name": "mamba", "d_model": 8}, m, VOCAB)
    assert own.kwargs["d_model"] == 8 and own.sizing["match"] == "arch_config"
    assert own.model.cfg.d_model == 8


def test_validate_only_sizes_without_building_and_agrees_with_the_build():
    m = ModelConfig(target_params=20_000, n_layers=1)
    checked = build({"name": "transformer"}, m, VOCAB, validate_only=True)
    built = build({"name": "transformer"}, m, VOCAB)
    assert checked.model is None and built.model is not None
    assert (checked.name, checked.label, checked.kwargs, checked.sizing) == \
        (built.name, built.label, built.kwargs, built.sizing)


def test_restating_a_default_keeps_the_identity_and_changing_it_does_not():
    m = ModelConfig(match="width", d_model=16, n_layers=1)
    plain = build({"name": "transformer"}, m, VOCAB, validate_only=True).kwargs
    restated = build({"name": "transformer", "pos_encoding": "rope"}, m, VOCAB, validate_only=True).kwargs
    changed = build({"name": "transformer", "pos_encoding": "alibi"}, m, VOCAB, validate_only=True).kwargs
    assert restated == plain and changed == {**plain, "pos_encoding": "alibi"}


def test_post_norm_and_bidirectional_models_get_their_own_curve():
    m = ModelConfig(match="width", d_model=16, n_layers=1, norm_position="post")
    assert build({"name": "mamba"}, m, VOCAB, validate_only=True).label == "mamba+postnorm"
    m = ModelConfig(match="width", d_model=16, n_layers=1, causal=False)
    built = build({"name": "mamba"}, m, VOCAB, validate_only=True)
    assert built.label == "mamba+bidirectional" and built.kwargs["causal"] is False


def test_unknown_keywords_fail_naming_them():
    with pytest.raises(TypeError, match="unknown keyword"):
        build({"name": "mamba", "n_head": 4}, ModelConfig(match="width", d_model=16), VOCAB, validate_only=True)
