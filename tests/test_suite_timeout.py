"""The suite's per-test timeout (pyproject: pytest-timeout, method "thread"): a test that
hangs ends the run with its stack instead of holding CI until its limit."""
import subprocess
import sys
import time

import pytest

from tests.paths import ROOT


@pytest.mark.slow
def test_a_hanging_test_is_stopped_with_its_stack(tmp_path):
    (tmp_path / "test_hangs.py").write_text(
        "import time\n\ndef test_forever():\n    while True:\n        time.sleep(0.05)\n")
    start = time.monotonic()
    # the project's ini (its timeout method), a 2 s timeout instead of 900
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path),
                           "-o", "timeout=2", str(tmp_path / "test_hangs.py")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode != 0
    assert time.monotonic() - start < 60
    out = done.stdout + done.stderr
    assert "Timeout" in out and "test_forever" in out, out[-2000:]
