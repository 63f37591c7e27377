"""Fixtures for the harness tests: a small synthetic results directory written with ResultStore."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.results import ResultStore, make_row, point_key

ENV = {"torch": "test", "git_commit": "abc123", "hostname": "test-host"}
LENGTHS = (256, 512, 1024, 2048, 4096)


def cost_rows(rng: np.random.Generator) -> list[dict]:
    """attention ∝ L², mamba ∝ L (they cross at L=1000), an OOM at the longest length."""
    rows = []
    for arch, coef, power in (("attention", 1e-5, 2.0), ("mamba", 1e-2, 1.0)):
        for mode in ("forward", "train", "decode"):
            for L in LENGTHS:
                common = dict(arch=arch, backend="ref", mode=mode, seq_len=L, batch=1, dtype="float32",
                              device="cpu-test", params=1000, env=ENV, experiment="synthetic")
                if arch == "attention" and L == LENGTHS[-1] and mode == "train":
                    rows.append(make_row(status="oom", reason="OutOfMemoryError: synthetic", **common))
                    continue
                t = coef * L**power * float(np.exp(rng.normal(0, 0.02)))
                state = 64 * L if arch == "attention" else 4096
                rows.append(make_row(time_ms=t, time_ms_p10=0.9 * t, time_ms_p90=1.1 * t,
                                     tokens_per_s=L / t * 1e3, peak_mem_bytes=int(1e3 * L**power),
                                     state_bytes=state, arch_kwargs={"d_model": 64}, **common))
    return rows


def extrapolation_rows(rng: np.random.Generator) -> list[dict]:
    rows = []
    for arch, decay in (("attention", 0.5), ("mamba", 0.05)):
        for seed in (0, 1, 2):
            for k in (1, 2, 4, 8):
                common = dict(arch=arch, backend="ref", mode="eval", task="induction", seq_len=128 * k,
                              train_seq_len=128, eval_seq_len=128 * k, seed=seed, env=ENV,
                              experiment="synthetic-extrap")
                if arch == "attention" and k == 8 and seed == 2:
                    rows.append(make_row(status="timeout", reason="PointTimeout: synthetic", **common))
                    continue
                acc = float(np.clip(1.0 - decay * np.log2(k) + rng.normal(0, 0.02), 0, 1))
                rows.append(make_row(accuracy=acc, loss=1.0 - acc + 0.1, **common))
    return rows


def write_results(root: Path, *, cost: bool = True, extrapolation: bool = True, seed: int = 0) -> Path:
    """Write one file per row under ``root`` (extrapolation rows in a multirun-like subfolder)."""
    rng = np.random.default_rng(seed)
    if cost:
        store = ResultStore(root)
        for row in cost_rows(rng):
            store.write(row, point_key(row, f"{row['arch']}-{row['mode']}-L{row['seq_len']}"))
    if extrapolation:
        store = ResultStore(root / "multirun" / "0")
        for row in extrapolation_rows(rng):
            store.write(row, point_key(row, f"{row['arch']}-s{row['seed']}-L{row['eval_seq_len']}"))
    return root


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    """Cost rows at the top level, extrapolation rows in a multirun-like subfolder."""
    return write_results(tmp_path / "results")


@pytest.fixture
def cost_only_dir(tmp_path: Path) -> Path:
    return write_results(tmp_path / "cost_only", extrapolation=False)


@pytest.fixture(scope="session")
def write_synthetic_results():
    """``write_results`` itself, for module-scoped fixtures that cannot use tmp_path."""
    return write_results


@pytest.fixture
def failing_arch(monkeypatch) -> str:
    """A registered architecture (tests.fakes.failing) that fails on purpose - OOM, error, or
    a training failure - at a chosen length; the registry is restored afterwards."""
    from archs import _registry, register_arch
    from tests.fakes import failing

    # Load the built-ins first: copying a not-yet-loaded registry would fill the copy, and
    # the restored original would then stay empty for the tests after this one.
    _registry.ensure_loaded()
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    register_arch("failing_test", family="test")(failing)
    return "failing_test"


@pytest.fixture
def full_disk(tmp_path):
    """A really full filesystem: a 4 MiB tmpfs (mounted here; needs root) with ``res`` and
    ``ck`` folders made first, then filled by a ``filler`` file. Delete the filler and the
    space comes back. Skipped where tmpfs cannot be mounted."""
    import os
    import subprocess

    mnt = tmp_path / "full"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs (a full disk)")
    try:
        for folder in ("res", "ck"):
            (mnt / folder).mkdir()
        fd = os.open(mnt / "filler", os.O_CREAT | os.O_WRONLY)
        try:
            while True:
                os.write(fd, b"\0" * 65536)
        except OSError:
            pass
        finally:
            os.close(fd)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
