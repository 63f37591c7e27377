"""The fla layout: shared cores live outside the families, so importing one family never
pulls in another, and every fused module imports on a CPU-only machine."""
import json
import subprocess
import sys

import pytest

from tests.paths import ROOT

PROBE = ("import importlib, json, sys; importlib.import_module(%r); "
         "print(json.dumps(sorted(m for m in sys.modules if m.startswith('archs.'))))")


def _loaded(module: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE % module], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("family,must_not", [
    ("archs.linear_attention", ("archs.mamba2", "archs.mamba")),
    ("archs.mamba2", ("archs.linear_attention", "archs.mamba")),
    ("archs.mamba", ("archs.mamba2", "archs.linear_attention")),
])
def test_a_family_imports_without_the_others(family, must_not):
    loaded = _loaded(family)
    assert "archs._ssd" in loaded or family == "archs.mamba"
    assert not [m for m in loaded if m.split(".")[:2] in [n.split(".") for n in must_not]], loaded


@pytest.mark.parametrize("family", ["linear_attention", "mamba", "mamba2"])
def test_each_family_has_the_four_files(family):
    folder = ROOT / "archs" / family
    assert {"ref.py", "chunked.py", "fused.py", "layer.py"} <= {p.name for p in folder.glob("*.py")}


def test_linear_attention_and_mamba2_share_one_chunked_core():
    from archs import _ssd
    from archs.linear_attention import chunked as la_chunked
    from archs.mamba2 import chunked as m2_chunked
    assert la_chunked.chunked_core is _ssd.chunked_core is m2_chunked.chunked_core
