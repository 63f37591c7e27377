"""harness.env: the environment fingerprint."""
from __future__ import annotations

import sys

import torch

from harness.env import OPTIONAL_PACKAGES, device_name, environment, package_version


def test_environment_has_the_fingerprint_keys():
    env = environment()
    for key in ("cpu", "gpu", "torch", "cuda", "cudnn", "python", "hostname", "threads",
                "git_commit", "git_dirty", *OPTIONAL_PACKAGES):
        assert key in env, key
    assert env["torch"] == torch.__version__
    assert env["threads"] == torch.get_num_threads()


def test_environment_is_cached_but_returns_a_copy():
    env = environment()
    env["torch"] = "tampered"
    assert environment()["torch"] == torch.__version__


def test_git_commit_is_found_in_a_checkout():
    commit = environment()["git_commit"]
    assert commit is None or (len(commit) == 40 and all(c in "0123456789abcdef" for c in commit))


def test_optional_packages_are_looked_up_without_importing():
    from harness import env as env_module

    env_module._environment.cache_clear()
    before = set(sys.modules)
    environment()
    imported = {name.split(".")[0] for name in set(sys.modules) - before}
    assert not imported & {"mamba_ssm", "causal_conv1d", "fla", "flash_attn", "triton"}


def test_package_version():
    import pandas

    assert package_version("surely-not-an-installed-dist-xyz", "pandas") == pandas.__version__
    assert package_version("surely-not-an-installed-dist-xyz") is None


def test_device_name_cpu():
    assert isinstance(device_name("cpu"), str) and device_name("cpu")


def test_rows_say_what_float32_means_for_matrix_products(monkeypatch):
    from harness.env import environment
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert environment()["fp32_matmul"] == "high"  # read at each call, not cached
        torch.set_float32_matmul_precision("highest")
        assert environment()["fp32_matmul"] == "highest"
    finally:
        torch.set_float32_matmul_precision(before)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert environment()["triton_fp32_dot"] is None  # no NVIDIA GPU: no TF32 question
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.delenv("TRITON_F32_DEFAULT", raising=False)
    assert environment()["triton_fp32_dot"] == "tf32 (default)"
    monkeypatch.setenv("TRITON_F32_DEFAULT", "ieee")
    assert environment()["triton_fp32_dot"] == "ieee"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    assert environment()["triton_fp32_dot"].startswith("ieee")  # a T4 has no TF32


def test_precision_read_after_the_new_per_backend_api_was_used():
    """torch's legacy getter raises once the new API set a precision: a row must still be
    written (every row, failure rows included, records the environment)."""
    import subprocess
    code = ("import torch; torch.backends.cuda.matmul.fp32_precision = 'tf32'\n"
            "from harness.env import environment; print(environment()['fp32_matmul'])")
    from tests.paths import ROOT
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "cuda matmul: tf32"
