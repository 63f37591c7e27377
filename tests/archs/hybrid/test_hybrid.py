"""Hybrid layer patterns (Jamba-style): layout, MoE placement, aux loss, clear errors."""
import pytest
import torch

from archs import create_arch
from archs.blocks import MLP, MoE
from archs import mixer_letters, register_mixer_letter
from archs.hybrid.pattern import is_moe_layer, parse_pattern
from archs.mamba import MambaMixer


def _hybrid(**kw):
    return create_arch("hybrid", **{"vocab_size": 16, "d_model": 16, **kw})


def test_layers_follow_the_pattern_repeated_to_depth():
    model = _hybrid(pattern="ARR", n_layers=6, mixer_kwargs={"A": {"n_heads": 2}})
    kinds = [type(m).__name__ for m in model.mixers]
    assert kinds == ["Attention", "LSTMMixer", "LSTMMixer"] * 2
    assert model.layout == "ARRARR"


def test_moe_every_other_layer_from_offset():
    model = _hybrid(pattern="AR", n_layers=4, moe_every=2, moe_offset=1, n_experts=4, top_k=2,
                    mixer_kwargs={"A": {"n_heads": 2}})
    assert [type(b.mlp) for b in model.blocks] == [MLP, MoE, MLP, MoE]
    model(torch.randint(0, 16, (2, 9)))
    aux = model.aux_loss()
    assert aux is not None and torch.isfinite(aux) and aux.item() > 0
    assert [is_moe_layer(i, 2, 1) for i in range(4)] == [False, True, False, True]


def test_relative_positions_reach_attention_layers():
    model = _hybrid(pattern="AR", pos_encoding="rope", mixer_kwargs={"A": {"n_heads": 2}})
    assert model.mixers[0].rope is not None
    assert _hybrid(pattern="AR", mixer_kwargs={"A": {"n_heads": 2}}).mixers[0].rope is None  # NoPE default


@pytest.mark.parametrize("letter,kwargs", [
    ("A", {"n_heads": 2}), ("W", {"n_heads": 2, "window": 4, "n_sink": 1}),
    ("I", {"n_heads": 2, "segment_len": 4}),
])
@pytest.mark.parametrize("pe", ["rope", "alibi"])
def test_relative_positions_reach_every_layer_that_takes_them(letter, kwargs, pe):
    # Which layers take positions comes from the mixer class (relative_positions), not a
    # hand-kept letter list: Infini-attention ("I") layers used to get none.
    model = _hybrid(pattern=letter + "R", pos_encoding=pe, mixer_kwargs={letter: kwargs})
    layer = model.mixers[0]
    assert layer.cfg.pos_encoding == pe
    assert (layer.rope is not None) == (pe == "rope") and (layer.alibi is not None) == (pe == "alibi")
    assert not hasattr(model.mixers[1], "rope")  # the LSTM takes none


@pytest.mark.parametrize("pattern,n_layers,match", [
    ("MAX", None, r"unknown letter\(s\) \['X'\]"),
    ("MAa", None, r"unknown letter\(s\) \['a'\]"),
    ("", None, "pattern is empty"),
    ("AR", 3, "not a multiple of the pattern length 2"),
])
def test_bad_patterns_are_clear_errors(pattern, n_layers, match):
    with pytest.raises(ValueError, match=match):
        parse_pattern(pattern, n_layers)


def test_kwargs_for_unused_letters_rejected():
    with pytest.raises(ValueError, match=r"letter\(s\) \['M'\] that the pattern does not use"):
        _hybrid(pattern="AR", mixer_kwargs={"M": {"d_state": 4}})


def test_letters_come_from_the_registry_and_cannot_be_taken_twice():
    letters = mixer_letters()
    assert {"A", "M", "D", "L", "W", "I", "R"} <= set(letters)
    assert letters["M"].mixer is MambaMixer
    with pytest.raises(ValueError, match="already means"):
        register_mixer_letter("A", "something else", MambaMixer)
    with pytest.raises(ValueError, match="one upper-case letter"):
        register_mixer_letter("ab", "two letters", MambaMixer)
    with pytest.raises(TypeError, match="not a Mixer subclass"):
        register_mixer_letter("Z", "not a mixer", object)


@pytest.mark.parametrize("letter,kwargs", [
    ("A", {"n_heads": 2}), ("M", {"d_state": 4, "block_len": 4}), ("D", {"d_state": 4, "headdim": 8, "chunk_size": 4}),
    ("L", {"n_heads": 2, "chunk_size": 4}), ("W", {"n_heads": 2, "window": 4, "n_sink": 1}),
    ("I", {"n_heads": 2, "segment_len": 4}), ("R", {}),
])
def test_every_letter_builds_and_decodes_like_its_parallel_form(letter, kwargs):
    from harness.conformance import check_prefill_matches_forward, check_step_matches_forward
    model = create_arch("hybrid", pattern=letter + "R" if letter != "R" else "RR", vocab_size=64,
                        d_model=16, mixer_kwargs={letter: kwargs} if kwargs else None).eval()
    check_step_matches_forward(model)
    check_prefill_matches_forward(model)


def test_jamba_default_layout_is_one_attention_in_eight_with_moe_every_other_layer():
    model = create_arch("jamba", vocab_size=16, d_model=16, n_layers=16, n_experts=4,
                        mixer_kwargs={"A": {"n_heads": 2}, "M": {"d_state": 4}})
    assert model.layout == "MMMMAMMM" * 2
    kinds = [type(m).__name__ for m in model.mixers]
    assert kinds.count("Attention") == 2 and kinds[4] == kinds[12] == "Attention"
    assert [isinstance(b.mlp, MoE) for b in model.blocks] == [i % 2 == 1 for i in range(16)]
    assert model.mixers[4].rope is None  # no positional encoding, as in Jamba
    assert model.num_params(active_only=True) < model.num_params()
