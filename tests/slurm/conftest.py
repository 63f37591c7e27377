"""SLURM tests submit real jobs to a running cluster (``scripts/slurm-local.sh start``, or the
cluster you are logged in to); without one they skip and say why."""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

LOCAL_CONF = Path(os.environ.get("ARCHBENCH_SLURM_DIR", "/tmp/archbench-slurm")) / "slurm.conf"


def _why_no_slurm() -> str | None:
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
    except ImportError:
        return "hydra-submitit-launcher is not installed (pip install archbench[cluster])"
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "SLURM is not installed (no sbatch/sinfo); try scripts/slurm-local.sh start"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 20 s: is slurmctld running? (scripts/slurm-local.sh status)"
    states = out.stdout.split()
    if out.returncode != 0:
        return f"SLURM is not running (sinfo: {out.stderr.strip()[:200]}); start it with scripts/slurm-local.sh start"
    if not any(s.rstrip("*~#").startswith(("idle", "mixed", "allocated")) for s in states):
        return f"no SLURM node is up (sinfo node states: {states or 'none'})"
    return None


def pytest_configure(config):
    # Clients find the local cluster by SLURM_CONF when /etc/slurm/slurm.conf is not its link.
    if "SLURM_CONF" not in os.environ and not Path("/etc/slurm/slurm.conf").exists() and LOCAL_CONF.exists():
        os.environ["SLURM_CONF"] = str(LOCAL_CONF)


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    reason = _why_no_slurm()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def job_name(slurm_cluster):
    """A SLURM job name unique to the test; its jobs are cancelled afterwards, whatever happened."""
    name = f"archbench-test-{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(["scancel", f"--name={name}"], capture_output=True, timeout=30)
