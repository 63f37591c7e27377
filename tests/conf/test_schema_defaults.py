"""One source of defaults: every schema's default equals the YAML that the CLI composes, so
code (tests included) that builds a config directly trains and measures as the command line
does (issue 26). A key the YAML sets differently from the schema fails here, naming both."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from harness.config import BenchConfig, CostConfig, EvalConfig, ExtrapolateConfig
from harness.train import TrainConfig
from tests.paths import ROOT

CONF = ROOT / "conf"


def _defaults(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _scalars(path) -> dict:
    data = yaml.safe_load(path.read_text()) or {}
    return {k: v for k, v in data.items() if k not in ("defaults", "hydra") and not isinstance(v, dict)}


CASES = [
    (TrainConfig(), CONF / "train/default.yaml"),
    (EvalConfig(), CONF / "eval/default.yaml"),
    (BenchConfig(), CONF / "bench/cpu.yaml"),  # cost.yaml's default bench
    (CostConfig(), CONF / "cost.yaml"),
    (ExtrapolateConfig(), CONF / "extrapolate.yaml"),
    (CostConfig().model, CONF / "cost.yaml", "model"),
    (ExtrapolateConfig().model, CONF / "extrapolate.yaml", "model"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{type(c[0]).__name__}-{c[1].name}{'.' + c[2] if len(c) > 2 else ''}")
def test_schema_defaults_equal_their_yaml(case):
    schema, path, *block = case
    yaml_values = (yaml.safe_load(path.read_text())[block[0]] if block else _scalars(path))
    defaults = _defaults(schema)
    unknown = sorted(set(yaml_values) - set(defaults))
    assert not unknown, f"{path.name} sets keys the schema lacks: {unknown}"
    differ = {k: (defaults[k], v) for k, v in yaml_values.items()
              if not isinstance(v, dict) and defaults[k] != v}
    assert not differ, f"{type(schema).__name__} defaults (code, yaml) differ from {path.name}: {differ}"
