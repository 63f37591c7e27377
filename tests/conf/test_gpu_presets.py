"""Every GPU model preset (conf/model/gpu_*.yaml), built on the meta device as the GPU
experiments build it, against the published model it is sized after: the transformer
has that model's shape and parameter count, and the other families are matched to it."""
from __future__ import annotations

import pytest
import torch
import yaml

from harness import cost
from harness.build import build
from tests.apps import compose
from tests.paths import CONF

# preset -> (published model, its parameter count, layers, width). GPT-2 small: 12 layers of
# width 768, a 50257-token vocabulary (here padded to 50304, as nanoGPT does), tied
# embeddings, 1024 learned positions: 124,439,808 parameters (Radford et al. 2019).
PUBLISHED = {"gpu_125m": ("GPT-2 small", 124_439_808, 12, 768)}
PRESETS = sorted(p.stem for p in (CONF / "model").glob("gpu_*.yaml"))
# the families the GPU experiments compare most (attention, SSD, an MoE hybrid by active size)
ARCHS = ("transformer", "mamba2", "jamba")


def _built(preset: str, arch: str):
    cfg = cost._as_schema(compose("cost", f"model={preset}", f"arch={arch}"))
    with torch.device("meta"):  # no memory, no initialisation: seconds for 125M parameters
        return build(cfg.arch, cfg.model, cfg.model.vocab_size), cfg.model


def test_every_gpu_preset_names_its_published_model():
    assert PRESETS and set(PRESETS) <= set(PUBLISHED), f"add {set(PRESETS) - set(PUBLISHED)} to PUBLISHED"


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_gpu_preset_matches_the_published_model(preset):
    name, params, layers, width = PUBLISHED[preset]
    spec = yaml.safe_load((CONF / "model" / f"{preset}.yaml").read_text())
    assert spec["n_layers"] == layers and abs(spec["target_params"] / params - 1) < 0.01, (preset, name)
    built, model_cfg = _built(preset, "transformer")
    assert built.model.embed.weight.is_meta
    assert built.model.cfg.n_layers == layers
    assert abs(built.kwargs["d_model"] / width - 1) < 0.02, (name, built.kwargs["d_model"])
    assert abs(built.model.num_params() / params - 1) < 0.02, (name, built.model.num_params())
    for arch in ARCHS[1:]:
        other, _ = _built(preset, arch)
        active = other.model.num_params(active_only=True)
        assert abs(active / model_cfg.target_params - 1) < 0.02, (arch, active)
