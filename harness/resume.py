"""Resumable training: everything a run needs to continue exactly where it stopped.

A long run (the Mamba paper's 204,800 steps) meets time limits, preemption and `scancel`.
``train(..., resume_path=P)`` keeps a snapshot at P - the weights, the optimizer's and the
gradient scaler's state, the step, every random stream the loop draws from (the data
generator, torch's global RNG, the noise-state generator and a passed state, the early-stop
evaluation's generator) and the result so far (losses, history, tokens, wall time) - and
starts from it when P exists, so an interrupted run ends with the weights an uninterrupted
one would have had, bit for bit (tests/harness/test_resume.py).

When it is written:
  * every ``train.snapshot_every_s`` seconds (a hard kill loses at most that much);
  * when a stop signal (SIGTERM / SIGUSR2, what SLURM sends at a time limit, preemption or
    `scancel`) or Ctrl-C ends the loop. Those signals are held back while the optimizer
    updates the weights (``hold_stop_signals``), so a snapshot always sits at a step
    boundary: the state *before* the step that was cut, whose batch is drawn again.

It is deleted once the run finishes (its final weights go to the checkpoint). A snapshot
whose identity (the run's key) differs from the run's is ignored with a warning and
replaced - it belongs to other settings or other code.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import torch

log = logging.getLogger(__name__)

HELD_SIGNALS = ("SIGTERM", "SIGUSR2", "SIGINT")


@contextlib.contextmanager
def hold_stop_signals() -> Iterator[None]:
    """Delay stop signals until the block ends (main thread; elsewhere a no-op): a weight
    update is never cut in half, so the snapshot taken on the way out is consistent.

    The Python handlers are swapped for a recorder, not the signals masked: a signal sent to
    the process may land on any thread (OpenMP's, tqdm's), and Python runs its handler in the
    main thread at once wherever the main thread is. On the way out the previous handlers come
    back and the first recorded signal is handed to its own (raising Terminated or
    KeyboardInterrupt there, or the default action)."""
    sigs = [getattr(signal, n) for n in HELD_SIGNALS if hasattr(signal, n)]
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: caught.append(signum)) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            handler = previous[caught[0]]
            if callable(handler):
                handler(caught[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(caught[0])


def rng_states(gen: torch.Generator, extra: dict[str, torch.Generator | None]) -> dict[str, Any]:
    """The random streams at this moment (cheap: a few KiB of generator state)."""
    states = {"data": gen.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    states.update({k: g.get_state() for k, g in extra.items() if g is not None})
    return states


def restore_rng(states: dict[str, Any], gen: torch.Generator, extra: dict[str, torch.Generator | None]) -> None:
    gen.set_state(states["data"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    for k, g in extra.items():
        if g is not None and k in states:
            g.set_state(states[k])


def save_snapshot(path: Path, identity: str, *, step: int, model: torch.nn.Module,
                  optimizer: torch.optim.Optimizer, scaler: Any, rng: dict[str, Any],
                  carried: Any, result: Any, first_loss: float | None, wall_s: float,
                  recent_losses: list[float] | None = None, finished: bool = False) -> None:
    """Write the snapshot atomically (a kill mid-write leaves the previous one). ``finished``:
    the run is complete; resuming it returns its result without training."""
    from harness.results import atomic_write  # the one atomic writer

    payload = {"identity": identity, "step": step, "model": model.state_dict(),
               "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rng,
               "carried": carried, "result": asdict(result), "first_loss": first_loss,
               "wall_s": wall_s, "recent_losses": list(recent_losses or []), "finished": finished}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_snapshot(path: Path | None, identity: str) -> dict[str, Any] | None:
    """The snapshot at ``path`` if it belongs to this run, else None (with a warning when a
    file is there but unusable: it is then overwritten by this run's snapshots)."""
    if path is None or not path.exists():
        return None
    try:
        # our own file, with optimizer state and RNG byte tensors: weights_only still loads it
        snap = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file is "no snapshot"
        log.warning("resume snapshot %s cannot be read (%s: %s); training from step 0",
                    path, type(exc).__name__, str(exc)[:200])
        return None
    if snap.get("identity") != identity:
        log.warning("resume snapshot %s belongs to another run (identity %s, this run %s); "
                    "training from step 0", path, snap.get("identity"), identity)
        return None
    return snap
