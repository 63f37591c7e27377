"""Forward+backward throughput of ONE Mamba-1 layer on CPU (``--levels layer``), of the bare
scan (``scan``) or of the whole LM (``lm``: embedding, blocks, norm, head, next-token loss):
our CPU kernel (backend "fused", archs/_scan_cpu.c) and chunked scan vs the sequential
reference vs the PyPI package mambapy (parallel scan), equal weights.

    python benchmarks/mamba_scan.py                      # L = 1024 4096 16384, all impls
    python benchmarks/mamba_scan.py --skip ref:16384     # skip a slow combination
    python benchmarks/mamba_scan.py --levels lm --seq-lens 4096 --skip ref:4096

Every implementation runs the same MambaMixer weights (copied into mambapy's
MambaBlock, whose parameter names match), the same input and the same loss; its output
and input gradient are checked against the reference at every length where the
reference runs. Timing uses torch.utils.benchmark.Timer.blocked_autorange. Each case is a
row file in the result store (``--out`` folder, default results/cpu/benchmarks/mamba_scan;
``python -m harness.report.collect`` merges them), each carrying the command that made it, the
machine, torch version, threads and git commit. Compare ratios within one run: on a
shared machine absolute numbers move a lot.
"""
from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from torch.utils.benchmark import Timer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from archs.mamba import MambaMixer, selective_scan_chunked_bld, selective_scan_ref  # noqa: E402
from archs.mamba.fused_cpu import selective_scan_cpu_bld  # noqa: E402
from harness.results import ResultStore, store_case_row  # noqa: E402

IMPLS = ("fused", "chunked", "ref", "mambapy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    p.add_argument("--levels", nargs="+", choices=("layer", "scan", "lm"), default=["layer"],
                   help="layer: the whole MambaMixer; scan: the bare selective scan")
    p.add_argument("--skip", action="append", default=[], metavar="IMPL:LEN",
                   help="skip one (impl, seq_len) combination; recorded as status=skipped")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layers", type=int, default=2, help="lm level: Mamba blocks in the LM")
    p.add_argument("--vocab", type=int, default=256, help="lm level: vocabulary (untied head in mambapy)")
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--expand", type=int, default=2)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--min-run-time", type=float, default=2.0,
                   help="seconds per measurement for blocked_autorange")
    p.add_argument("--min-runs", type=int, default=3,
                   help="stretch min-run-time so even the slowest case is timed this often")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "results/cpu/benchmarks/mamba_scan",
                   help="results folder: one row file per case (harness.report.collect merges them)")
    args = p.parse_args(argv)
    for item in args.skip:
        impl, _, length = item.partition(":")
        if impl not in IMPLS or not length.isdigit():
            p.error(f"--skip wants IMPL:LEN with IMPL in {IMPLS}, got {item!r}")
    return args


# -- the three layers, sharing one set of weights ------------------------------------------
def build_layers(args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    torch.manual_seed(args.seed)
    kw = dict(d_state=args.d_state, expand=args.expand)
    chunked = MambaMixer(args.d_model, backend="chunked", **kw)
    layers: dict[str, torch.nn.Module] = {"chunked": chunked}
    if "fused" in args.impls:
        layers["fused"] = MambaMixer(args.d_model, backend="fused", **kw)
        layers["fused"].load_state_dict(chunked.state_dict())
    if "ref" in args.impls:
        layers["ref"] = MambaMixer(args.d_model, backend="ref", **kw)
        layers["ref"].load_state_dict(chunked.state_dict())
    if "mambapy" in args.impls:
        from mambapy.mamba import MambaBlock, MambaConfig

        cfg = MambaConfig(d_model=args.d_model, n_layers=1, d_state=args.d_state,
                          expand_factor=args.expand, pscan=True)
        layers["mambapy"] = MambaBlock(cfg)
        # same parameter names and shapes: strict loading proves equal parameters
        layers["mambapy"].load_state_dict(chunked.state_dict(), strict=True)
    return layers  # chunked is always built: it owns the weights the others copy


def build_lms(args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    """The whole LM (embedding, n_layers pre-norm Mamba blocks, final RMSNorm, head) per
    impl, sharing one set of weights: mambapy's ``LM`` gets our embedding as its (untied)
    head, so the two compute the same function (checked by the logits' error column)."""
    from archs import create_arch

    torch.manual_seed(args.seed)
    kw = dict(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.n_layers,
              d_state=args.d_state, expand=args.expand)
    lms = {impl: create_arch("mamba", backend=impl, **kw) for impl in ("chunked", "fused", "ref")
           if impl in args.impls or impl == "chunked"}
    for impl in lms:
        lms[impl].load_state_dict(lms["chunked"].state_dict())
    if "mambapy" in args.impls:
        from mambapy.lm import LM
        from mambapy.mamba import MambaConfig

        theirs = LM(MambaConfig(d_model=args.d_model, n_layers=args.n_layers, d_state=args.d_state,
                                expand_factor=args.expand, pscan=True), args.vocab)
        ours = lms["chunked"].state_dict()
        mapped = {"embedding.weight": ours["embed.weight"], "lm_head.weight": ours["embed.weight"],
                  "norm_f.weight": ours["norm.weight"]}
        for key, value in ours.items():
            if key.startswith("blocks."):
                _, i, rest = key.split(".", 2)
                mapped[f"mamba.layers.{i}." + ("norm.weight" if rest == "mixer_norm.weight" else rest)] = value
        theirs.load_state_dict(mapped, strict=True)  # every parameter named and shaped alike
        lms["mambapy"] = theirs
    return lms


Workload = Callable[[], tuple[torch.Tensor, torch.Tensor]]


def layer_workloads(layers: dict, x: torch.Tensor, w: torch.Tensor) -> dict[str, Workload]:
    """Forward, loss, grads of input and parameters: one training step's worth of work."""
    def make(layer: torch.nn.Module) -> Workload:
        def step() -> tuple[torch.Tensor, torch.Tensor]:
            y = layer(x)
            grads = torch.autograd.grad((y * w).sum(), [x, *layer.parameters()])
            return y.detach(), grads[0]
        return step
    return {name: make(layer) for name, layer in layers.items()}


def lm_workloads(lms: dict, tokens: torch.Tensor) -> dict[str, Workload]:
    """One training step of the whole LM: logits, next-token loss, every parameter's grad
    (returned: the logits and the first block's in_proj grad, compared across impls; not the
    embedding's, which also carries the head's gradient in our tied LM and not in mambapy's)."""
    def make(lm: torch.nn.Module) -> Workload:
        names, params = zip(*lm.named_parameters())
        first_in_proj = next(i for i, n in enumerate(names) if n.endswith("mixer.in_proj.weight"))

        def step() -> tuple[torch.Tensor, torch.Tensor]:
            logits = lm(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
            grads = torch.autograd.grad(loss, params)
            return logits.detach(), grads[first_in_proj]
        return step
    return {name: make(lm) for name, lm in lms.items()}


def scan_workloads(layers: dict, x: torch.Tensor, w: torch.Tensor) -> dict[str, Workload]:
    """The bare selective scan y = scan(u, dt, A, B, C) + D u, fwd + grads of all inputs,
    on the layer's A and D with dt, B, C drawn at realistic scales; (B, L, E) layout."""
    chunked = layers["chunked"]
    batch, seq_len, _ = x.shape
    gen = torch.Generator().manual_seed(seq_len)
    d_inner, d_state = chunked.config.d_inner, chunked.config.d_state
    u = torch.randn(batch, seq_len, d_inner, generator=gen)
    dt = torch.nn.functional.softplus(torch.randn(batch, seq_len, d_inner, generator=gen) - 3)
    B, C = (torch.randn(batch, seq_len, d_state, generator=gen) for _ in range(2))
    inputs = [t.requires_grad_() for t in (u, dt, chunked.A.detach().clone(), B, C,
                                           chunked.D.detach().clone())]
    w_y = torch.randn(batch, seq_len, d_inner, generator=gen)

    def bld_ref(u, dt, A, B, C, D):  # the reference takes mamba_ssm's (B, D, L) layout
        t = lambda a: a.transpose(1, 2)  # noqa: E731
        return t(selective_scan_ref(t(u), t(dt), A, t(B), t(C), D))

    fns = {"chunked": selective_scan_chunked_bld, "ref": bld_ref, "fused": selective_scan_cpu_bld}
    if "mambapy" in layers:
        fns["mambapy"] = layers["mambapy"].selective_scan  # its pscan path, same layout

    def make(fn) -> Workload:
        def step() -> tuple[torch.Tensor, torch.Tensor]:
            y = fn(*inputs)
            grads = torch.autograd.grad((y * w_y).sum(), inputs)
            return y.detach(), grads[0]
        return step
    return {name: make(fn) for name, fn in fns.items()}


def errors_vs_ref(work: dict[str, Workload]) -> dict[str, float]:
    """Max abs error of output and first input's gradient vs the reference."""
    y_ref, g_ref = work["ref"]()
    errs = {}
    for name, fn in work.items():
        y, g = fn()
        errs[name] = max((y - y_ref).abs().max().item(), (g - g_ref).abs().max().item())
    return errs


def measure(fn: Workload, min_run_time: float, min_runs: int):
    """blocked_autorange, with the run time stretched so slow cases still get min_runs."""
    timer = Timer("fn()", globals=dict(fn=fn), num_threads=torch.get_num_threads())
    one_call = timer.timeit(number=1).median  # also the warm-up
    return timer.blocked_autorange(min_run_time=max(min_run_time, min_runs * one_call))


# -- provenance and output ---------------------------------------------------------------
def machine_info() -> dict[str, object]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "archs", "benchmarks"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        commit += "-dirty" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return dict(torch_version=torch.__version__, threads=torch.get_num_threads(),
                cpu_model=cpu, git_commit=commit)


def store_row(store: ResultStore, row: dict) -> dict:
    """One measured case as a result row in the store (the project's atomic writer)."""
    return store_case_row(store, row, identity=("level", "impl", "seq_len", "batch", "d_model", "d_state",
                                                "expand", "n_layers", "vocab", "dtype", "cpu_model",
                                                "threads"),
                          name=("level", "impl", "seq_len"), experiment="bench_mamba_scan",
                          arch=row["impl"], backend=row["impl"], mode=f"{row['level']}_fwd_bwd",
                          time_ms=row.get("median_ms"), device=row.get("cpu_model"))


def run(args: argparse.Namespace, store: ResultStore | None = None) -> pd.DataFrame:
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = build_layers(args)
    lms = build_lms(args) if "lm" in args.levels else {}
    info = {**machine_info(), "command": getattr(args, "command", ""), "platform": platform.platform(),
            "python": platform.python_version()}
    params = {"layer": sum(p.numel() for p in layers["chunked"].parameters())}
    params["scan"] = params["layer"]
    if lms:
        params["lm"] = sum(p.numel() for p in lms["chunked"].parameters())
    skips = {tuple(s.split(":")) for s in args.skip}
    rows = []
    for level, seq_len in itertools.product(args.levels, args.seq_lens):
        gen = torch.Generator().manual_seed(args.seed + seq_len)
        x = torch.randn(args.batch, seq_len, args.d_model, generator=gen).requires_grad_()
        w = torch.randn(args.batch, seq_len, args.d_model, generator=gen)
        if level == "lm":  # seq_len tokens in, seq_len - 1 predicted
            work = lm_workloads(lms, torch.randint(args.vocab, (args.batch, seq_len + 1), generator=gen))
        else:
            work = (layer_workloads if level == "layer" else scan_workloads)(layers, x, w)
        work = {k: v for k, v in work.items()
                if k in args.impls and (k, str(seq_len)) not in skips}
        errs = errors_vs_ref(work) if "ref" in work else {}
        for name in args.impls:
            row = dict(level=level, impl=name, seq_len=seq_len, batch=args.batch,
                       d_model=args.d_model, d_state=args.d_state, expand=args.expand,
                       n_layers=args.n_layers if level == "lm" else 1,
                       vocab=args.vocab if level == "lm" else None, dtype="float32",
                       params=params[level],
                       max_abs_err_vs_ref=errs.get(name, float("nan")), **info)
            if name not in work:
                rows.append(dict(row, status="skipped", reason="--skip"))
                if store is not None:
                    store_row(store, rows[-1])
                continue
            m = measure(work[name], args.min_run_time, args.min_runs)
            rows.append(dict(row, status="ok", tokens_per_s=args.batch * seq_len / m.median,
                             median_ms=m.median * 1e3, iqr_ms=m.iqr * 1e3,
                             n_runs=len(m.times)))
            if store is not None:
                store_row(store, rows[-1])
            print(f"{level:5s} {name:8s} L={seq_len:6d} {m.median * 1e3:10.1f} ms "
                  f"{rows[-1]['tokens_per_s']:10.0f} tok/s  err={row['max_abs_err_vs_ref']:.2e}",
                  flush=True)
    return pd.DataFrame(rows)


def summarize(df: pd.DataFrame) -> str:
    lines = []
    for level, part in df[df.status == "ok"].groupby("level", sort=False):
        ok = part.pivot(index="seq_len", columns="impl", values="tokens_per_s")
        for ours, other in (("fused", "mambapy"), ("fused", "chunked"), ("chunked", "mambapy"),
                            ("chunked", "ref")):
            if ours in ok and other in ok:
                for seq_len, ratio in (ok[ours] / ok[other]).dropna().items():
                    lines.append(f"{level}: {ours} / {other} at L={seq_len}: {ratio:.1f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in [
        os.path.relpath(__file__, ROOT), *(sys.argv[1:] if argv is None else argv)])
    if args.out.suffix == ".csv":
        raise SystemExit(f"--out {args.out}: rows now go to a results folder (one file per case); "
                         f"give a folder and run `python -m harness.report.collect FOLDER` for a CSV")
    args.command = command
    df = run(args, ResultStore(args.out))
    print(summarize(df))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
