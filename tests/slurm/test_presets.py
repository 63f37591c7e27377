"""The SLURM launcher presets compose (no cluster needed): arrays, limits, partition/account."""
from __future__ import annotations

import pytest

from tests.apps import compose


@pytest.mark.parametrize("preset, gpus", [("slurm_cpu", None), ("slurm_gpu", 1)])
def test_slurm_presets_compose_with_overrides(preset, gpus):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    overrides = [f"hydra/launcher={preset}", "hydra.launcher.partition=p1", "hydra.launcher.account=acc",
                 "hydra.launcher.timeout_min=7", "hydra.launcher.array_parallelism=3"]
    cfg = compose("cost", *overrides, hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.account, launcher.timeout_min, launcher.array_parallelism) == (
        "p1", "acc", 7, 3)
    assert launcher.gpus_per_node == gpus and launcher.mem_gb > 0 and launcher.cpus_per_task >= 1
    assert launcher.max_num_timeout == 0 and launcher.signal_delay_s > 0


def test_sacct_bypass_warning_is_dropped_and_others_kept(caplog):
    import logging

    from harness.cluster import prepare_launchers

    prepare_launchers()  # what each app's main() does before any launcher runs

    logger = logging.getLogger("submitit")
    with caplog.at_level(logging.WARNING, logger="submitit"):
        logger.warning("Call #3 - Bypassing sacct error Command '['sacct']' returned 1., status may be inaccurate.")
        logger.warning("Caught signal SIGUSR2 on vm: this job is timed-out.")
    assert [r.getMessage() for r in caplog.records] == ["Caught signal SIGUSR2 on vm: this job is timed-out."]


def test_torch_backends_pickles_by_name():
    # submitit cloudpickles `python -m harness.extrapolate`'s task function by value; it reaches
    # torch.backends.
    import pickle

    import cloudpickle
    import torch

    from harness.cluster import prepare_launchers

    prepare_launchers()  # what each app's main() does before any launcher runs

    assert pickle.loads(cloudpickle.dumps(torch.backends)) is torch.backends
