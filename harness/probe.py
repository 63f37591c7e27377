"""A linear probe per trigger distance: did the state forget, or can the readout not read it?

    python -m harness.probe --seq-len 4096 --distances 250,1000,4000 \\
        [--checkpoint PATH --n-train 1024 --n-test 256 --out rows.csv] \\
        experiment=induction_paper arch=induction/mamba

The Hydra overrides compose the extrapolation config (conf/extrapolate.yaml), so the
model is built exactly as that run built it; without --checkpoint the run's own
checkpoint (``checkpoint_dir/<label>-<train key>.pt``) is loaded.

For each distance d the task is fixed at d (``Task.at_distance``) and fresh sequences
of ``--seq-len`` tokens are run through the model. At each sequence's first scored
position (the query: induction heads' final S, passkey's Q) we take the final hidden
state - the normalised residual stream the LM head reads - and:

* ``head_acc``: the model's own prediction there (argmax of its logits) vs the answer;
* ``probe_acc``: a linear probe, closed-form ridge regression onto one-hot answers
  (``fit_ridge``), fitted on ``n_train`` sequences and scored on ``n_test`` others.

probe_acc >> head_acc means the answer is still linearly decodable from the state but
the head, tuned to the distances seen in training, does not read it; both at chance
means the state itself has lost it. The test sequences are those ``evaluate`` draws
with the same seed and batch size, so ``head_acc`` is the evaluation's accuracy.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from harness.tasks import Batch, Task


# ---------------------------------------------------------------- the probe itself


def fit_ridge(x: torch.Tensor, y: torch.Tensor, n_classes: int, ridge: float = 1e-3
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form ridge regression of one-hot(y) on x: (W (D, C), b (C,)).

    Features are centred (the bias is not penalised); ``ridge`` is relative to the
    mean feature variance, so the same value suits any hidden-state scale:
    W = (Xcᵀ Xc + λ·n·tr(Σ)/D · I)⁻¹ Xcᵀ (Y - Ȳ)."""
    x = x.double()
    n, dim = x.shape
    targets = torch.nn.functional.one_hot(y.long(), n_classes).double()
    mu, ybar = x.mean(0), targets.mean(0)
    xc = x - mu
    gram = xc.T @ xc
    lam = ridge * float(torch.trace(gram)) / dim + 1e-12
    w = torch.linalg.solve(gram + lam * torch.eye(dim, dtype=x.dtype), xc.T @ (targets - ybar))
    return w, ybar - mu @ w


def predict_ridge(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x.double() @ w + b).argmax(dim=-1)


# ---------------------------------------------------------------- features from a model


@torch.no_grad()
def query_features(model, batch: Batch, chunk_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden (B, D), head prediction (B,), answer (B,)) at each sequence's first scored
    position; long sequences run in ``chunk_len`` chunks carrying the decode state."""
    tokens = batch.inputs
    scored = batch.scored
    if not scored.any(dim=1).all():
        raise ValueError("every sequence needs a scored position for the probe")
    pos = scored.int().argmax(dim=1)  # (B,) first scored position
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    answer = batch.targets[rows, pos]
    hidden = torch.empty(tokens.shape[0], model.cfg.d_model, device=tokens.device)
    step = chunk_len or tokens.shape[1]
    state = model.init_state(tokens.shape[0]) if step < tokens.shape[1] else None
    for start in range(0, tokens.shape[1], step):
        chunk = tokens[:, start:start + step]
        h = model._embed(chunk, start)
        for i, block in enumerate(model.blocks):
            if state is None:
                h = block(h)
            else:
                h, state.layers[i] = block.prefill(h, state.layers[i])
        if state is not None:
            state.pos += chunk.shape[1]
        here = (pos >= start) & (pos < start + chunk.shape[1])
        hidden[here] = model.norm(h)[rows[here], pos[here] - start].float()
    prediction = model.head(hidden.to(model.head.weight.dtype)).argmax(dim=-1)
    return hidden, prediction, answer


def _draw(model, task: Task, seq_len: int, n: int, batch_size: int, seed: int, chunk_len, device):
    gen = torch.Generator().manual_seed(seed)
    feats, preds, answers, done = [], [], [], 0
    while done < n:
        b = min(batch_size, n - done)
        batch = task.sample(b, seq_len, gen, split="eval").to(device)
        h, p, a = query_features(model, batch, chunk_len)
        feats.append(h.cpu())
        preds.append(p.cpu())
        answers.append(a.cpu())
        done += b
    return torch.cat(feats), torch.cat(preds), torch.cat(answers)


def probe_distances(model, task: Task, seq_len: int, distances: Sequence[int | None], *,
                    n_train: int = 1024, n_test: int = 256, batch_size: int = 64, seed: int = 1234,
                    ridge: float = 1e-3, chunk_len: int | None = None,
                    device: torch.device | str = "cpu") -> pd.DataFrame:
    """One row per distance: probe vs head accuracy on ``n_test`` held-out sequences.

    Test sequences use generator ``seed`` (those ``evaluate`` draws with that seed and
    ``batch_size``), training sequences ``seed + 1``."""
    model.eval()
    out = []
    for d in distances:
        t = task.at_distance(d) if d is not None else task
        x_train, _, y_train = _draw(model, t, seq_len, n_train, batch_size, seed + 1, chunk_len, device)
        x_test, head, y_test = _draw(model, t, seq_len, n_test, batch_size, seed, chunk_len, device)
        w, b = fit_ridge(x_train, y_train, task.vocab_size, ridge)
        out.append({"trigger_distance": d, "eval_seq_len": seq_len,
                    "probe_acc": float((predict_ridge(w, b, x_test) == y_test).float().mean()),
                    "head_acc": float((head == y_test).float().mean()),
                    "probe_train_acc": float((predict_ridge(w, b, x_train) == y_train).float().mean()),
                    "chance": 1.0 / max(1, int(y_train.unique().numel())),
                    "n_train": n_train, "n_test": n_test, "ridge": ridge, "task": task.name})
    return pd.DataFrame(out)


# ---------------------------------------------------------------- CLI


def load_model(overrides: Sequence[str], checkpoint: str | None):
    """(model, task, cfg) of the extrapolation run the overrides describe, its weights loaded."""
    from harness.config import compose
    from harness.train import load_checkpoint
    from harness.training_run import TrainingRun, as_extrapolate_config

    cfg = as_extrapolate_config(compose("extrapolate", overrides))
    run = TrainingRun(cfg)
    path = Path(checkpoint) if checkpoint else run.checkpoint()
    if path is None or not path.exists():
        raise FileNotFoundError(f"no checkpoint {path}: train the run first (python -m harness.extrapolate "
                                f"{' '.join(overrides)}) or pass its path")
    load_checkpoint(run.model, path)
    return run.model.to(run.device), run.task, cfg


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 250,1000; got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="archbench-probe", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="weights file (default: the run's own)")
    parser.add_argument("--seq-len", type=int, required=True, help="length of the probed sequences")
    parser.add_argument("--distances", type=_int_list, required=True, help="trigger distances, e.g. 250,1000")
    parser.add_argument("--n-train", type=int, default=1024)
    parser.add_argument("--n-test", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--ridge", type=float, default=1e-3, help="relative ridge penalty")
    parser.add_argument("--chunk-len", type=int, default=4096, help="state-carrying chunks (0: one pass)")
    parser.add_argument("--seed", type=int, default=1234, help="test sequences' seed (training: seed+1)")
    parser.add_argument("--out", default=None, help="write rows to this .csv (default: print them)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the extrapolation run")
    args = parser.parse_args(argv)
    for key in ("seq_len", "n_train", "n_test", "batch_size"):
        if getattr(args, key) <= 0:
            parser.error(f"--{key.replace('_', '-')} must be positive")
    model, task, cfg = load_model(args.overrides, args.checkpoint)
    rows = probe_distances(model, task, args.seq_len, args.distances, n_train=args.n_train, n_test=args.n_test,
                           batch_size=args.batch_size, seed=args.seed, ridge=args.ridge,
                           chunk_len=args.chunk_len or None, device=next(model.parameters()).device)
    rows.insert(0, "label", getattr(model, "arch_name", ""))
    rows["train_seq_len"] = cfg.train.seq_len
    rows["seed"] = cfg.train.seed
    if args.out:
        rows.to_csv(args.out, index=False)
        print(f"{len(rows)} rows in {args.out}")
    else:
        print(rows.to_string(index=False, float_format=lambda v: f"{v:.3f}" if not math.isnan(v) else "nan"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
