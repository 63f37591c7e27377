"""conf/arch/*.yaml and the registry agree: one source of truth for every default.

* A top-level arch file without ``label:`` restates its registry entry's defaults for
  reading: every key must be one the builder accepts, with exactly the builder's default
  (so a file cannot silently say headdim 32 while the code says 64).
* A file with ``label:`` is a named variant (its own curve): its keys must be accepted and
  must change something.
* ``arch/induction/*`` and ``arch/lm/*`` inherit a top-level file through Hydra's defaults list and carry
  only what differs from it.
"""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from archs import arch_info, mixer_letters
from harness import cost, extrapolate
from harness.build import RESERVED as build_reserved, build

from tests.apps import compose
from tests.paths import CONF  # noqa: E402
ARCH = CONF / "arch"
RESERVED = (*build_reserved, "defaults")  # harness.build.RESERVED + Hydra's own key


def _options(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(ARCH).with_suffix("")) for p in folder.glob("*.yaml"))


def _composed_arch(option: str, app: str = "cost") -> dict:
    cfg = compose(app, f"arch={option}")
    arch = OmegaConf.to_container(cfg.arch, resolve=True)
    # the harness takes it: sizing to the app's default model, kwargs checked, no weights
    built = build((cost if app == "cost" else extrapolate)._as_schema(cfg).arch,
                  (cost if app == "cost" else extrapolate)._as_schema(cfg).model, 256,
                  validate_only=True)
    assert (built.name, built.label) == (arch["name"], arch.get("label", arch["name"]))
    return arch


def _own_keys(option: str) -> dict:
    """The keys a file sets itself (not inherited)."""
    return {k: v for k, v in yaml.safe_load((ARCH / f"{option}.yaml").read_text()).items()
            if k not in RESERVED}


def _mixer_kwargs_accepted(letter: str) -> set[str]:
    mixer = mixer_letters()[letter].mixer
    if mixer.config_class is not None:
        return {f.name for f in dataclasses.fields(mixer.config_class)} - {"d_model"}
    return set(inspect.signature(mixer.__init__).parameters) - {"self", "d_model"}


def _check_accepted(option: str, arch: dict) -> None:
    info = arch_info(arch["name"])
    unknown = set(arch) - set(RESERVED) - set(info.accepted_kwargs())
    assert not unknown, f"conf/arch/{option}.yaml: {arch['name']} does not accept {sorted(unknown)}"
    for letter, kwargs in (arch.get("mixer_kwargs") or {}).items():
        stray = set(kwargs) - _mixer_kwargs_accepted(letter)
        assert not stray, f"conf/arch/{option}.yaml: mixer_kwargs[{letter!r}] has unknown {sorted(stray)}"


def _disagreements(arch: dict) -> dict:
    """{key: (config value, code default)} for every key the config sets differently."""
    defaults = arch_info(arch["name"]).builder_defaults()
    return {k: (v, defaults.get(k, "<no default>")) for k, v in arch.items()
            if k not in RESERVED and defaults.get(k, object()) != v}


@pytest.mark.slow
@pytest.mark.parametrize("option", _options(ARCH))
def test_top_level_arch_files_restate_the_code_defaults_exactly(option):
    arch = _composed_arch(option)
    _check_accepted(option, arch)
    wrong = _disagreements(arch)
    if "label" in arch:  # a named variant: it must differ from the entry it names
        assert wrong, f"conf/arch/{option}.yaml has a label but changes nothing; drop the file"
        return
    assert not wrong, (f"conf/arch/{option}.yaml disagrees with the code's defaults "
                       f"(yaml, code): {wrong}; change the default in archs/ (one source of truth) "
                       f"or make the file a labelled variant")


@pytest.mark.slow
@pytest.mark.parametrize("option", _options(ARCH / "induction") + _options(ARCH / "lm"))
def test_variant_arch_files_inherit_and_carry_only_what_differs(option):
    raw = yaml.safe_load((ARCH / f"{option}.yaml").read_text())
    parents = [d for d in raw.get("defaults", []) if isinstance(d, str) and d.startswith("/arch/")]
    assert len(parents) == 1 and parents[0].endswith("@_here_"), \
        f"conf/arch/{option}.yaml must inherit one top-level arch file (- /arch/<name>@_here_)"
    parent = parents[0][len("/arch/"):-len("@_here_")]
    base, arch = _composed_arch(parent, "extrapolate"), _composed_arch(option, "extrapolate")
    _check_accepted(option, arch)
    for key, value in _own_keys(option).items():
        assert base.get(key, object()) != value, \
            f"conf/arch/{option}.yaml repeats {key}={value!r} from arch/{parent}; drop it"
    assert arch["name"] == base["name"]


def test_the_check_catches_a_mismatch_and_an_unknown_key():
    # the mismatch this test exists for: a file saying headdim 64 while the code says 32
    assert _disagreements({"name": "mamba2", "headdim": 64}) == {"headdim": (64, 32)}
    assert _disagreements({"name": "mamba2", "headdim": 32, "d_state": 64}) == {}
    assert _disagreements({"name": "jamba", "pattern": "MMMMAMMM", "n_layers": 8}) == {}
    with pytest.raises(AssertionError, match=r"does not accept \['head_dim'\]"):
        _check_accepted("x", {"name": "mamba2", "head_dim": 32})
    with pytest.raises(AssertionError, match=r"mixer_kwargs\['W'\] has unknown \['windw'\]"):
        _check_accepted("x", {"name": "hybrid", "mixer_kwargs": {"W": {"windw": 4}}})


def test_every_builtin_has_an_arch_file():
    """The family recipe's second half: `arch=<name>` works for every built-in."""
    from harness.conformance.plan import builtins
    named = {(yaml.safe_load(p.read_text()) or {}).get("name") for p in ARCH.glob("*.yaml")}
    missing = sorted(set(builtins()) - named)
    assert not missing, f"no conf/arch/*.yaml names {missing}: add conf/arch/<name>.yaml (name: <name> + its defaults)"
