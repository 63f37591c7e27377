"""The README's family recipe is true: a new built-in family is one folder under ``archs/``
and one ``conf/arch/<name>.yaml``, and the registry-driven tests take it with no other edit.

The test copies the project into a temporary folder, adds a toy family there (the plugin
example's minGRU as ``archs/toyfam/``, registered with a hybrid letter and no colour, and
its YAML), and runs in that copy the tests that read the registry and the folders: the
registry's tables (letters, colours, backends), the layout, config agreement, and, for the
toy, conformance, numerics and the initial-state contract. It fails if any of them holds
a hard-coded list a new family would have to be added to.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import ROOT

PARTS = ("archs", "conf", "harness", "tests", "pyproject.toml")
MINGRU = ROOT / "examples/archbench-plugin-example/archbench_plugin_example/mingru.py"
INIT = '''"""A toy family: minGRU (Feng et al. 2024) as a built-in."""
from archs._registry import register_arch
from archs.toyfam.layer import MinGRU, mingru

register_arch("toyfam", family="toyfam", description="minGRU as a built-in family",
              mixer=MinGRU, letter="T", tiny=dict(d_model=32, n_layers=2))(mingru)
'''
YAML = "name: toyfam\nexpand: 1\n"
# Tests that read tables or folders: run whole. Tests parametrised by the registry: run for the toy.
WHOLE = ("tests/archs/test_registry.py", "tests/archs/test_layout.py", "tests/conf/test_arch_configs.py")
PER_ARCH = ("tests/harness/test_conformance.py", "tests/archs/test_numerics.py",
            "tests/harness/test_train.py")


def _copy_project(dest: Path) -> None:
    """The tracked files of PARTS (a clean clone's view), or the folders minus caches."""
    listed = subprocess.run(["git", "ls-files", "-z", *PARTS], cwd=ROOT, capture_output=True)
    if listed.returncode == 0 and listed.stdout:
        for rel in filter(None, listed.stdout.decode().split("\0")):
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, target)
        return
    for part in PARTS:
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / part)


def _pytest(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
def test_a_folder_and_a_yaml_make_a_family(tmp_path):
    project = tmp_path / "project"
    _copy_project(project)
    family = project / "archs" / "toyfam"
    family.mkdir()
    shutil.copy2(MINGRU, family / "layer.py")
    (family / "__init__.py").write_text(INIT)
    (project / "conf" / "arch" / "toyfam.yaml").write_text(YAML)

    collected = _pytest(project, "--collect-only", "-k", "toyfam", *PER_ARCH)
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-2000:]
    assert len(re.findall(r"toyfam", collected.stdout)) >= 10, collected.stdout[-3000:] + collected.stderr[-2000:]
    for args in (WHOLE, ("-k", "toyfam", *PER_ARCH)):
        proc = _pytest(project, *args)
        assert proc.returncode == 0, f"pytest {' '.join(args)} in the copy with archs/toyfam:\n{proc.stdout[-4000:]}"
        assert re.search(r"\d+ passed", proc.stdout) and " failed" not in proc.stdout
