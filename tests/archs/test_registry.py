import sys
import warnings

import pytest
import torch

import archs
from archs import _registry, arch_info, create_arch, list_archs, register_arch
from archs.model import LMConfig, build_lm


def test_lists_builtin_transformer_variants():
    names = list_archs()
    for pe in ("", "_nope", "_sinusoidal", "_learned", "_alibi"):
        assert f"transformer{pe}" in names
    assert names == sorted(names)
    assert list_archs("transformer_*") == [n for n in names if n.startswith("transformer_")]


def test_arch_info_metadata():
    info = arch_info("transformer_learned")
    assert info.family == "attention"
    assert info.max_seq_len == 1024 and arch_info("transformer").max_seq_len is None
    assert set(info.backends) == {"ref", "fused", "flash_attn", "auto"}
    assert info.description and info.mixer is archs.attention.Attention
    assert "d_model" in info.accepted_kwargs() and "n_heads" in info.accepted_kwargs()


# The built-ins' hybrid-pattern letters: renaming one breaks every saved pattern, so they are
# pinned; a new family adds its own letter beside them without editing this table.
BUILTIN_LETTERS = {"A": "Attention", "D": "Mamba2Mixer", "F": "FFNMixer", "I": "InfiniAttention",
                   "L": "LinearAttentionMixer", "M": "MambaMixer", "R": "LSTMMixer",
                   "W": "SlidingWindowAttention"}


def test_one_registration_gives_backends_letter_and_colour():
    # backends come from the mixer class; the letter and the colour from the same call
    for name in list_archs():
        info = arch_info(name)
        if info.mixer is not None:
            assert info.backends == info.mixer.backends, name
    letters = {k: v.mixer for k, v in archs.mixer_letters().items()}
    assert BUILTIN_LETTERS.items() <= {k: v.__name__ for k, v in letters.items()}.items()
    for name in list_archs():  # every registered letter builds the mixer its arch declared
        info = arch_info(name)
        if info.letter is not None:
            assert letters[info.letter] is info.mixer, name
    colors = archs.arch_colors()
    assert colors["transformer_math"] != colors["transformer"] == colors["transformer_rope"]
    assert set(list_archs()) <= set(colors)  # a colour for every arch, given or picked
    assert len({colors[n] for n in list_archs()}) == len(list_archs())  # distinct per arch


def test_an_arch_without_a_colour_gets_a_free_one(scratch_registry):
    before = archs.arch_colors()
    given = {n: _registry.arch_info(n).color for n in list_archs() if _registry.arch_info(n).color}
    register_arch("zz_colourless", family="test")(_builder_a)
    register_arch("aa_colourless", family="test")(_builder_b)
    after = archs.arch_colors()
    assert {n: after[n] for n in given} == given  # a given colour never moves
    assert len(set(after.values())) == len(set(before.values())) + 2  # two new, distinct, unused
    assert {after["aa_colourless"], after["zz_colourless"]} <= set(_registry.TAB20 + _registry.TAB20B)
    assert archs.arch_colors() == after  # the same set maps the same way


def test_backend_words_are_one_vocabulary_with_deprecated_aliases():
    from archs import backends
    from archs.backends import VOCABULARY, canonical_backend
    for name in list_archs():
        extra = set(arch_info(name).backends) - set(VOCABULARY)
        assert extra <= {"flash_attn"}, (name, extra)  # attention's second, named kernel
    model_kw = dict(vocab_size=16, d_model=16, n_layers=1)
    for old, new, arch in [("math", "ref", "transformer"), ("sdpa", "fused", "transformer"),
                           ("naive", "ref", "linear_attention"), ("blocked", "chunked", "sliding_window"),
                           ("torch", "fused", "lstm")]:
        kw = {"n_heads": 2} if arch != "lstm" else {}
        backends._WARNED.discard(old)  # warned once per process: forget earlier uses
        with pytest.warns(FutureWarning, match=f"backend {old!r} is deprecated; use {new!r}"):
            model = create_arch(arch, backend=old, **model_kw, **kw)
        assert model.backends("cpu", 64) == new
        assert canonical_backend(old) == new


def test_alias_warns_only_once():
    from archs import backends
    backends._WARNED.discard("fast")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backends.canonical_backend("fast")
        backends.canonical_backend("fast")
    assert len([w for w in caught if issubclass(w.category, FutureWarning)]) == 1


def test_unavailable_kernel_is_one_error_type_with_one_hint():
    from archs.backends import BackendUnavailableError, require
    with pytest.raises(BackendUnavailableError, match=r"`no_such_kernel_pkg`.*pip install archbench\[gpu\]"):
        require("test", "no_such_kernel_pkg")
    assert issubclass(BackendUnavailableError, ImportError)  # old except ImportError still catches it


def test_unknown_arch_lists_known_and_close_matches():
    with pytest.raises(KeyError, match=r"Did you mean 'transformer'.*Known architectures: .*transformer_alibi"):
        create_arch("transfomer")


def test_unknown_kwarg_is_named():
    with pytest.raises(TypeError, match=r"unknown keyword\(s\) \['n_head'\].*n_heads"):
        create_arch("transformer", n_head=4)


@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))


def _builder_a(vocab_size=16, d_model=8, n_layers=1, **shell):
    from archs.attention import Attention, AttentionConfig
    return build_lm(LMConfig(vocab_size, d_model, n_layers, **shell),
                    lambda i: Attention(AttentionConfig(d_model, 2)))


def _builder_b(vocab_size=16, d_model=8, n_layers=1, **shell):
    return _builder_a(vocab_size, d_model, n_layers, **shell)


def test_duplicate_name_names_both_sources(scratch_registry):
    register_arch("dup_test", family="test")(_builder_a)
    register_arch("dup_test", family="test")(_builder_a)  # identical: idempotent
    with pytest.raises(ValueError, match=r"already registered by .*_builder_a.*_builder_b"):
        register_arch("dup_test", family="test")(_builder_b)


def test_bad_names_rejected():
    with pytest.raises(ValueError, match="must be non-empty"):
        register_arch("bad name!", family="x")


@pytest.mark.parametrize("kw,match", [
    ({"d_model": 30, "n_heads": 4}, "not divisible by n_heads=4"),
    ({"d_model": 0}, "d_model must be a positive integer"),
    ({"n_layers": -1}, "n_layers must be a positive integer"),
    ({"vocab_size": 0}, "vocab_size must be a positive integer"),
    ({"n_heads": 4, "n_kv_heads": 3}, "multiple of n_kv_heads"),
    ({"pos_encoding": "xpos2"}, "unknown pos_encoding"),
    ({"backend": "triton"}, "unknown backend 'triton'"),
    ({"norm": "batchnorm"}, "unknown norm"),
    ({"mlp": "relu"}, "unknown mlp"),
])
def test_bad_sizes_and_options_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        create_arch("transformer", **{"d_model": 32, **kw})


def _sized_by_width(name: str) -> bool:
    """Every architecture but the count-based ones (archs.counting), which have no width."""
    from archs.counting import trains_by_counting
    return not trains_by_counting(create_arch(name, **arch_info(name).tiny))


@pytest.mark.slow
@pytest.mark.parametrize("arch", [n for n in list_archs() if _sized_by_width(n)])
def test_target_params_within_a_few_percent(arch):
    tiny = {k: v for k, v in arch_info(arch).tiny.items() if k != "d_model"}
    target = 2_000_000
    model = create_arch(arch, target_params=target, vocab_size=256, **tiny)
    assert abs(model.num_params() - target) / target < 0.05, model.num_params()
    assert model.arch_kwargs["d_model"] == model.cfg.d_model


def test_a_count_based_model_refuses_a_width():
    with pytest.raises(ValueError, match="no width up to 512 is accepted"):
        create_arch("ngram", target_params=10_000)


def test_target_params_and_d_model_conflict():
    with pytest.raises(ValueError, match="either d_model or target_params"):
        create_arch("transformer", d_model=64, target_params=10_000)


def test_broken_plugin_is_reported_by_name(monkeypatch):
    class BrokenEP:
        name, value = "broken_plugin", "nowhere:register"

        def load(self):
            raise ImportError("No module named 'nowhere'")

    monkeypatch.setattr(_registry, "entry_points", lambda group: [BrokenEP()])
    monkeypatch.setattr(_registry, "_PLUGIN_ERRORS", {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _registry._load_plugins()
    assert "broken_plugin" in str(caught[0].message) and "nowhere" in str(caught[0].message)
    assert "broken_plugin" in _registry._PLUGIN_ERRORS
    assert "transformer" in list_archs()  # the others still work


def test_public_api_exports():
    for name in ("register_arch", "create_arch", "list_archs", "arch_info", "Mixer",
                 "LanguageModel", "LMConfig", "build_lm", "SequenceTooLongError"):
        assert hasattr(archs, name)
    model = create_arch("transformer", d_model=16, n_layers=1, n_heads=2, vocab_size=10)
    assert isinstance(model, archs.LanguageModel)
    assert model.arch_name == "transformer" and model.arch_kwargs["pos_encoding"] == "rope"
    assert torch.is_tensor(model(torch.zeros(1, 3, dtype=torch.long)))


def test_recorded_backend_labels_map_to_todays_words():
    from archs.backends import recorded_backend
    assert recorded_backend("chunked+sdpa") == "chunked+fused"
    assert recorded_backend("sdpa+torch") == "fused"  # both now the fused path
    assert recorded_backend("sdpa|blocked") == "fused|chunked"
    assert recorded_backend("math") == "ref" and recorded_backend("chunked") == "chunked"


def test_plugin_calling_sys_exit_is_a_plugin_error(monkeypatch):
    class EP:
        name, value = "exiting", "exiting_plugin:register"

        def load(self):
            return lambda: sys.exit(3)

    monkeypatch.setattr(_registry, "entry_points", lambda group: [EP()])
    monkeypatch.setattr(_registry, "_PLUGIN_ERRORS", {})
    with pytest.warns(RuntimeWarning, match="exiting"):
        _registry._load_plugins()
    assert "SystemExit" in _registry._PLUGIN_ERRORS["exiting"]
