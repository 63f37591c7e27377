"""Look at the tasks from the command line.

    python -m harness.tasks                       # one short sample of every task
    python -m harness.tasks show mqar --seq-len 40 --set num_kv_pairs=4 vocab_size=32
    python -m harness.tasks time --batch 64 --seq-len 4096 65536

`show` prints inputs over targets ('.' = not scored); `time` prints the median time to
sample one batch (a look, not a benchmark result).
"""

from __future__ import annotations

import argparse
import ast
import statistics
import time

import torch

from harness.tasks import get_task, list_tasks


def _kwargs(pairs: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw  # a bare string such as noise=zero
    return out


def show(name: str, seq_len: int | None, kwargs: dict[str, object]) -> None:
    task = get_task(name, **kwargs)
    length = seq_len or max(task.min_len(), 24)
    batch = task.sample(1, length, torch.Generator().manual_seed(0))
    width = len(str(task.vocab_size))
    print(f"{name}  {task.params()}  vocab_size={task.vocab_size}  seq_len={length}")
    print("  inputs: ", " ".join(f"{t:>{width}}" for t in batch.inputs[0].tolist()))
    targets = (f"{t:>{width}}" if t >= 0 else "." * width for t in batch.targets[0].tolist())
    print("  targets:", " ".join(targets))


def time_tasks(names: list[str], batch: int, lengths: list[int], repeats: int = 5) -> None:
    g = torch.Generator().manual_seed(0)
    for name in names:
        task = get_task(name)
        task.sample(1, task.min_len(), g)  # builds any corpus outside the timing
        for length in lengths:
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                task.sample(batch, length, g, split="train")
                runs.append(time.perf_counter() - start)
            print(f"{name:>16}  B={batch} L={length:>7}  {1e3 * statistics.median(runs):8.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.tasks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="show", choices=["show", "time"])
    parser.add_argument("names", nargs="*", help=f"tasks (default: all of {list_tasks()})")
    parser.add_argument("--seq-len", type=int, nargs="+", default=None)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--set", nargs="*", default=[], help="task parameters, key=value")
    args = parser.parse_args()
    names = args.names or list_tasks()
    if args.command == "time":
        time_tasks(names, args.batch, args.seq_len or [4096, 65536])
        return
    for name in names:
        show(name, args.seq_len[0] if args.seq_len else None, _kwargs(args.set) if args.names else {})


if __name__ == "__main__":
    main()
