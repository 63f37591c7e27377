"""The plugin path end to end: pip-install the example package into a scratch folder and,
in a fresh interpreter (as a user would), see its architecture listed, created, passing
the conformance suite, and selectable as `arch=mingru` in a composed Hydra config."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import ROOT  # noqa: E402

EXAMPLE = ROOT / "examples" / "archbench-plugin-example"

PROBE = """
import json, archs, torch
torch.set_num_threads(1)  # tiny models: one thread, immune to a loaded machine
from harness.config import register_configs
from hydra import compose, initialize_config_dir
from harness.conformance import CHECKS, DTYPE_CHECKS, run_check, run_checks
model = archs.create_arch("mingru", vocab_size=16, d_model=8, n_layers=1)
logits = model(torch.zeros(1, 5, dtype=torch.long))
mixed = archs.create_arch("hybrid", pattern="GA", vocab_size=16, d_model=8,
                          mixer_kwargs={"A": {"n_heads": 2}})
register_configs()  # the schemas the primary config extends (the apps' main() registers them)
with initialize_config_dir(config_dir=%(conf)r, version_base="1.3"):
    cfg = compose("cost", overrides=["arch=mingru"])
print(json.dumps({
    "listed": archs.list_archs("min*"),
    "family": archs.arch_info("mingru").family,
    "shape": list(logits.shape),
    "backend": model.backends(),
    "failed": [r.check for r in (run_check("mingru", c) for c in CHECKS) if not r.passed],
    "failed_other_dtypes": [f"{r.check} [{r.dtype}]" for r in run_checks(
        "mingru", checks=list(DTYPE_CHECKS), dtypes=["bfloat16", "float64"], lengths=(1024,)) if not r.passed],
    "arch_cfg": dict(cfg.arch),
    "letter": archs.mixer_letters()["G"].mixer.__name__,
    "hybrid_layers": [type(m).__name__ for m in mixed.mixers],
    "backends": list(archs.arch_info("mingru").backends),
    "color": archs.arch_colors()["mingru"],
    "builtin_colors": [c for n, c in archs.arch_colors().items() if n != "mingru"],
    "plugin_errors": archs.plugin_errors(),
}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plugin")
    src = tmp / "src"
    shutil.copytree(EXAMPLE, src)  # build in a copy: no build/ or egg-info in the repo
    target = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(src)], check=True)
    return target


def _run(code: str, site: Path | None) -> subprocess.CompletedProcess:
    paths = ([str(site)] if site else []) + [str(ROOT)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=ROOT.parent)


@pytest.mark.slow
def test_installed_plugin_is_listed_created_conformant_and_composable(installed):
    proc = _run(PROBE % {"conf": str(ROOT / "conf")}, installed)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["listed"] == ["mingru"]
    assert out["family"] == "rnn"
    assert out["shape"] == [1, 5, 16]
    assert out["backend"] == "ref"  # its single declared backend, reported without being told
    assert out["failed"] == [] and out["failed_other_dtypes"] == []
    assert out["arch_cfg"] == {"name": "mingru", "expand": 1}
    assert out["plugin_errors"] == {}
    # the same register_arch call gave it a hybrid letter and its backends; a plot colour
    # nobody else holds was picked for it
    assert out["letter"] == "MinGRU" and out["hybrid_layers"] == ["MinGRU", "Attention"]
    assert out["backends"] == ["ref"] and out["color"] not in out["builtin_colors"]


@pytest.mark.slow
def test_without_the_plugin_it_is_absent():
    proc = _run("import archs; print(archs.list_archs('min*'))", None)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.slow
def test_register_twice_is_harmless(installed):
    code = ("import archbench_plugin_example as p, archs; p.register(); p.register(); "
            "print(archs.list_archs('min*'))")
    proc = _run(code, installed)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['mingru']"
