"""The Triton kernel tier: every Triton kernel archbench calls, run by Triton's interpreter
on CPU tensors against the ``ref`` backend, forward and backward (tests/triton_interpret/
shims.py says what the interpreter needs and what the tier cannot see).

It needs triton, fla-core and mamba-ssm's no-CUDA build at the pinned versions
(``make kernels``; ``make test`` installs them and runs this tier as its own pytest call,
with ARCHBENCH_REQUIRE_KERNELS=1: a missing package is then an error, not a skip).
Each test adds its worst errors to a table printed at the end of the run.
"""
from __future__ import annotations

import importlib.metadata
import os
import time

import pytest

from tests.triton_interpret.shims import interpreter_on, interpreter_shims

TIER = "triton_interpret"

# fields of the closing table, filled by ``report``
ROWS: list[dict] = []


def _missing() -> list[str]:
    """The pinned kernel packages not installed at their pins. A CUDA build of torch brings
    its own triton (`make kernels` keeps it): any version of it then does."""
    import torch

    from scripts.pins import KERNEL_PINS
    out = []
    for dist, version in KERNEL_PINS.items():
        try:
            found = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found = None
        if found != version and not (dist == "triton" and found and torch.version.cuda):
            out.append(f"{dist}=={version} (found {found or 'nothing'})")
    return out


def pytest_collection_modifyitems(config, items):
    missing = _missing() if interpreter_on() else []
    if not missing:
        return
    why = f"needs {', '.join(missing)}: run `make kernels`"
    if os.environ.get("ARCHBENCH_REQUIRE_KERNELS") == "1":  # `make test`: a skip would hide it
        raise pytest.UsageError(f"the {TIER} tier {why}")
    for item in items:
        item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(scope="session", autouse=True)
def _interpreter():
    with interpreter_shims():
        yield


@pytest.fixture
def report():
    """``report(kernel, fwd_err, bwd_err=None)``: a row of the closing table; its seconds are
    the CPU seconds since the test started or since its previous row (CPU, not wall: on a
    shared machine wall time says more about the neighbours than about the kernel)."""
    last = [time.process_time()]

    def add(kernel: str, fwd: float, bwd: float | None = None) -> None:
        now = time.process_time()
        ROWS.append(dict(kernel=kernel, fwd=fwd, bwd=bwd, seconds=now - last[0]))
        last[0] = now
    return add


def pytest_terminal_summary(terminalreporter):
    if not ROWS:
        return
    tr = terminalreporter
    tr.section("Triton kernels under the interpreter (errors relative to the reference's scale)")
    tr.write_line(f"{'kernel':72s} {'forward err':>11s} {'backward err':>12s} {'CPU s':>8s}")
    for r in ROWS:
        bwd = "-" if r["bwd"] is None else f"{r['bwd']:.1e}"
        tr.write_line(f"{r['kernel']:72s} {r['fwd']:11.1e} {bwd:>12s} {r['seconds']:8.2f}")
