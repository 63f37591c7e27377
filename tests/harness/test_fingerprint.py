"""The code fingerprint (harness.checks.code_fingerprint): a hash of every source file that
makes a model and a task, part of the training key, so a checkpoint trained by other code is
never reused silently."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from harness import extrapolate
from harness.fingerprint import _module_files, code_fingerprint

from tests.apps import EXTRAP_SMOKE, compose
from tests.paths import ROOT


def test_code_fingerprint_follows_the_source(tmp_path, monkeypatch):
    src = tmp_path / "fp_mod.py"
    src.write_text("import torch\nclass M(torch.nn.Module):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import fp_mod

    before = code_fingerprint(fp_mod.M())
    src.write_text("import torch\nclass M(torch.nn.Module):\n    pass  # changed\n")
    assert code_fingerprint(fp_mod.M()) != before


def _package(root: Path) -> None:
    pkg = root / "fp_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "model.py").write_text(textwrap.dedent("""
        import torch
        from fp_pkg.kernels import scan

        class M(torch.nn.Module):
            def forward(self, x):
                from fp_pkg.lazy import fused  # imported only when called
                return scan(fused(x))
    """))
    (pkg / "kernels.py").write_text("from fp_pkg import deep\n\ndef scan(x):\n    return deep.step(x)\n")
    (pkg / "deep.py").write_text("def step(x):\n    return x\n")
    (pkg / "lazy.py").write_text("def fused(x):\n    return x\n")


@pytest.mark.parametrize("edited", ["deep.py", "lazy.py", "kernels.py"])
def test_editing_any_file_the_model_imports_changes_the_fingerprint(tmp_path, monkeypatch, edited):
    _package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("fp_pkg")]:
        monkeypatch.delitem(sys.modules, name)
    import fp_pkg.model

    before = code_fingerprint(fp_pkg.model.M())
    with open(tmp_path / "fp_pkg" / edited, "a") as f:
        f.write("# edited\n")
    assert code_fingerprint(fp_pkg.model.M()) != before


@pytest.mark.slow
def test_the_fingerprint_of_a_built_in_covers_its_whole_family(tmp_path):
    cfg = extrapolate._as_schema(compose("extrapolate", *EXTRAP_SMOKE, "model.n_layers=1",
                                         f"results_dir={tmp_path}", "arch=mamba", "checkpoint_dir=null"))
    exp = extrapolate.Experiment(cfg)
    files = {str(p.relative_to(ROOT)) for p in _module_files([exp.model, *exp.model.modules(), exp.task])}
    assert {"archs/mamba/chunked_blocks.py", "archs/mamba/ref.py", "archs/precision.py",
            "archs/model.py", "harness/tasks/induction.py", "harness/tasks/base.py"} <= files
    # ... and the builder that made it (archs/mamba/__init__.py) through code_fingerprint
    assert "archs/mamba/__init__.py" in {str(p.relative_to(ROOT)) for p in _module_files(
        [__import__("archs").arch_info("mamba").builder])}


@pytest.mark.slow
def test_training_key_includes_model_and_task_code(tmp_path):
    cfg = extrapolate._as_schema(compose("extrapolate", *EXTRAP_SMOKE, "model.n_layers=1",
                                         f"results_dir={tmp_path}", "arch=lstm", "checkpoint_dir=null"))
    exp = extrapolate.Experiment(cfg)
    assert exp.train_settings["code"] == code_fingerprint(exp.model, exp.task)
    files = {p.name for p in _module_files(
        [exp.model, *exp.model.modules(), exp.task])}
    assert {"model.py", "induction.py"} <= files and any("lstm" in f or f == "layer.py" for f in files)
