"""Training and checkpoints (issue 24): a blown-up model is a `diverged` row, a checkpoint is
keyed by all the code that makes the model and says which run it belongs to, it stays inside
checkpoint_dir whatever the label, and neither a kill nor a full disk during its save leaves
a mess or a riddle."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from harness import extrapolate
from harness.train import CheckpointError
from tests.apps import EXTRAP_SMOKE, compose
from tests.paths import ROOT


def _cfg(tmp_path, *overrides, arch="lstm"):
    return compose("extrapolate", *EXTRAP_SMOKE, "model.n_layers=1", f"results_dir={tmp_path / 'r'}",
                   f"checkpoint_dir={tmp_path / 'ck'}", f"arch={arch}", *overrides)


# --- a final update that blows the model up --------------------------------------------------

@pytest.mark.slow
def test_a_model_blown_up_by_its_last_update_gives_diverged_rows(tmp_path):
    # One step at lr=1e30: the loss before it was finite, the model after it gives NaN.
    df = extrapolate.run(_cfg(tmp_path, "train.lr=1e30", "train.steps=1", arch="mamba"))
    assert len(df) == 2 and set(df["status"]) == {"diverged"}, df[["status", "reason"]]
    assert all("non-finite" in reason for reason in df["reason"])
    assert not list((tmp_path / "ck").glob("*.pt"))  # a broken model is not kept for reuse


# --- a checkpoint says which run it belongs to --------------------------------------------------

@pytest.mark.slow
def test_a_checkpoint_swapped_for_another_runs_is_refused(tmp_path):
    ck = {}
    for seed in (0, 1):
        extrapolate.run(_cfg(tmp_path, f"train.seed={seed}"))
        (ck[seed],) = set((tmp_path / "ck").glob("*.pt")) - set(ck.values())
    shutil.copy(ck[1], ck[0])  # seed 0's name, seed 1's weights
    with pytest.raises(CheckpointError) as info:
        extrapolate.run(_cfg(tmp_path, "train.seed=0", "eval.seq_lens=[48]"))  # a new length: loads
    message = str(info.value)
    assert str(ck[0]) in message and "was written by training run" in message and "force=true" in message


@pytest.mark.slow
def test_rows_take_the_training_numbers_from_the_checkpoint_not_its_sidecar(tmp_path):
    first = extrapolate.run(_cfg(tmp_path))
    (sidecar,) = (tmp_path / "ck").glob("*.json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "final_loss": 123.0, "steps_done": 9}))
    again = extrapolate.run(_cfg(tmp_path, "eval.seq_lens=[48]"))
    new = again[again["eval_seq_len"] == 48].iloc[0]
    assert new["train_loss"] == pytest.approx(first["train_loss"].iloc[0]) and new["train_steps"] == 4


@pytest.mark.slow
def test_weights_altered_after_the_save_are_refused(tmp_path):
    extrapolate.run(_cfg(tmp_path))
    (ckpt,) = (tmp_path / "ck").glob("*.pt")
    record = torch.load(ckpt, weights_only=True)
    name = next(iter(record["weights"]))
    record["weights"][name] = record["weights"][name] + 1.0
    torch.save(record, ckpt)
    with pytest.raises(CheckpointError, match="do not match the hash"):
        extrapolate.run(_cfg(tmp_path, "eval.seq_lens=[48]"))


@pytest.mark.slow
def test_a_label_cannot_put_a_checkpoint_outside_checkpoint_dir(tmp_path):
    ck = tmp_path / "a" / "b" / "ck"
    extrapolate.run(_cfg(tmp_path, f"checkpoint_dir={ck}", "+arch.label='../../x'"))
    outside = [p for p in tmp_path.rglob("*.pt") if p.parent != ck]
    assert len(list(ck.glob("*.pt"))) == 1 and not outside, outside


# --- a kill or a full disk during the save ----------------------------------------------------

_SAVER = textwrap.dedent("""
    import sys, time
    import torch
    from harness.train import save_checkpoint

    def slow_save(obj, path, *args, **kwargs):  # half the file, then the kill arrives
        with open(path, "wb") as f:
            f.write(b"\\0" * 2**20)
            f.flush()
        print("WRITING", flush=True)
        time.sleep(60)

    torch.save = slow_save
    save_checkpoint(torch.nn.Linear(4, 4), sys.argv[1])
""")


@pytest.mark.slow
def test_a_temp_file_left_by_a_kill_during_the_save_is_removed_on_the_next_run(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    saver = subprocess.Popen([sys.executable, "-c", _SAVER, str(ck / "lstm-abc.pt")], stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert saver.stdout.readline().strip() == "WRITING"
    saver.send_signal(signal.SIGKILL)
    saver.wait()
    (temp,) = ck.glob(".lstm-abc.pt.*.tmp")  # recognisable: the checkpoint's name, host, pid
    assert temp.stat().st_size == 2**20
    extrapolate.run(_cfg(tmp_path))
    assert not list(ck.glob(".*.tmp")) and len(list(ck.glob("*.pt"))) == 1


@pytest.mark.slow
def test_a_full_disk_during_the_save_says_disk_full_and_names_the_file(tmp_path, full_disk):
    with pytest.raises(OSError, match="disk full") as info:
        extrapolate.run(_cfg(tmp_path, f"checkpoint_dir={full_disk / 'ck'}"))
    assert str(full_disk / "ck") in str(info.value) and ".pt" in str(info.value)
    assert not list((full_disk / "ck").iterdir())  # no temp file either


def test_an_errno_less_write_error_on_a_full_disk_is_named(tmp_path, monkeypatch):
    # torch.save's C++ writer reports a full disk without an errno; the free space tells.
    from harness import atomic
    from harness.train import save_checkpoint

    def failing_save(*args, **kwargs):
        raise RuntimeError("basic_ios::clear: iostream error")

    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 * 2**30, 10 * 2**30, 0))
    with pytest.raises(OSError, match=r"disk full: cannot write .*model\.pt.*0\.0 MiB free"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "model.pt")
    assert not list(tmp_path.iterdir())
