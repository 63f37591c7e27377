"""One source for the kernel packages' versions (pyproject.toml, read by scripts/pins.py):
the [gpu] extra, the Makefile's `make kernels`, the wheelhouse and the Triton kernel tier
take them from there, and nothing else names another version."""
from __future__ import annotations

import re
import subprocess
import sys

from scripts.pins import KERNEL_PINS
from tests.paths import ROOT

PINNED = {"triton": "3.9.0", "fla-core": "0.6.0", "mamba-ssm": "2.3.2.post1"}  # DESIGN.md's checked facts


def test_pyproject_pins_the_checked_versions():
    assert KERNEL_PINS == PINNED


def test_makefile_and_wheelhouse_take_the_versions_from_pins_py():
    for path in ("Makefile", "scripts/wheelhouse.sh"):
        text = (ROOT / path).read_text()
        assert "pins.py" in text, path
        for name in PINNED:
            # a version written next to a pinned package's name would be a second source
            assert not re.search(rf"{name}\s*[=<>~!]=", text, flags=re.IGNORECASE), (path, name)


def test_readme_states_the_pinned_versions():
    readme = (ROOT / "README.md").read_text()
    for name, version in PINNED.items():
        assert f"{name} {version}" in readme, name


def test_pins_cli_prints_requirements_and_refuses_unknown_names():
    run = lambda *a: subprocess.run([sys.executable, "scripts/pins.py", *a], cwd=ROOT,  # noqa: E731
                                    capture_output=True, text=True)
    assert run("fla-core", "mamba-ssm").stdout.split() == ["fla-core==0.6.0", "mamba-ssm==2.3.2.post1"]
    bad = run("torch")
    assert bad.returncode == 2 and "no pin for ['torch']" in bad.stderr
