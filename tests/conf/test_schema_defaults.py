"""One source of defaults: every schema's default equals the YAML that the CLI composes, so
code (tests included) that builds a config directly trains and measures as the command line
does (issue 26). A key the YAML sets differently from the schema fails here, naming both."""
from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys

import pytest
import yaml

from harness.config import BenchConfig, CostConfig, EvalConfig, ExtrapolateConfig, TrainConfig
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


def test_the_schemas_import_no_app_and_no_training_loop():
    """harness.config is what everything imports; it must not drag the training loop (or an
    app) in behind it, or a schema-only import pays for torch's training machinery and cycles."""
    probe = ("import sys, harness.config; print(sorted(m for m in sys.modules if m.startswith('harness.')))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert not {"harness.train", "harness.cost", "harness.extrapolate", "harness.sweep"} & set(loaded), loaded
