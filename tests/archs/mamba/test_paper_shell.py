"""arch=induction/mamba_paper_shell against mamba-ssm 1.0.1's MambaLMHeadModel(64, 2, 17), the
model of the Mamba paper's induction reproduction: same logits and gradients from the same
weights, same initialisation (scripts/check_paper_shell.py). Needs that release's source
from PyPI (cached after the first run); skipped when it cannot be fetched."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.paths import ROOT


@pytest.mark.slow
def test_paper_shell_matches_mamba_ssm_1_0_1(tmp_path):
    script = ROOT / "scripts" / "check_paper_shell.py"
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import check_paper_shell
        check_paper_shell.fetch_sdist()
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"mamba-ssm 1.0.1's sdist could not be fetched: {exc}")
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    # a subprocess: the check stubs CUDA-only modules (causal_conv1d, ...) in sys.modules
    proc = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "c.json")],
                          capture_output=True, text=True, timeout=600)
    record = json.loads((tmp_path / "c.json").read_text())
    assert proc.returncode == 0 and record["failures"] == [], proc.stdout[-3000:] + proc.stderr[-3000:]
