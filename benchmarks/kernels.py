"""Kernel-level benchmarks, in the protocols that published GPU numbers use.

    python benchmarks/kernels.py attention            # FlashAttention's protocol (GPU sizes)
    python benchmarks/kernels.py scan_vs_attention    # Mamba paper: fused scan vs attention
    python benchmarks/kernels.py attention --quick    # CPU-sized smoke run

* ``attention`` mirrors the FlashAttention-2 benchmark: total hidden size 2048, head dim
  64 and 128, batch x length held at 16K tokens, lengths 512 .. 16K, causal, forward and
  forward+backward, FLOPs counted as FlashAttention does (causal = half of 4·B·L²·H·Dh,
  backward = 2.5x forward), so TFLOP/s read directly against its published H100 figures.
  Implementations: every SDPA kernel torch has on this device (flash, efficient, cudnn,
  math) forced one at a time, the flash-attn package if installed, and our explicit
  ``attention_math`` reference; on a CPU also archbench's small-head C kernel
  (``cpu_small_heads``, archs/attention/fused_cpu.py) beside SDPA's CPU flash kernel, e.g.
  ``--device cpu --hidden 64 --head-dims 4 8 16 32 --tokens 2048``, which is how the
  kernel's routing threshold was chosen. A kernel that cannot run a case is a row with its
  error.
* ``scan_vs_attention`` times, at batch 1 and growing length, Mamba's selective scan
  (mamba_ssm's fused kernel when importable, else our chunked PyTorch scan - the row says
  which) against causal attention (SDPA) of the same width, forward+backward, and
  reports where the curves cross (the Mamba paper: the fused scan beats FlashAttention-2
  beyond ~2K tokens on an A100).

Rows go through harness.results (one atomic file per point; re-runs resume) into
``results/<device>/kernels``; figures and a table are written beside them.
"""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from archs.attention import fused_cpu as attention_fused_cpu  # noqa: E402
from archs.attention.fused import attention_flash, attention_sdpa, flash_attn_available  # noqa: E402
from archs.attention.ref import attention_math  # noqa: E402
from harness.config import DTYPES  # noqa: E402
from harness.env import device_name  # noqa: E402
from harness.report.fit import crossover  # noqa: E402
from harness.report.markdown import markdown_table  # noqa: E402
from harness.results import ResultStore, atomic_write, load_rows, make_row, point_key  # noqa: E402
from harness.devices import device_peak  # noqa: E402
from harness import roofline  # noqa: E402
from harness.timing import classify_exception, free_memory, time_callable  # noqa: E402

SDPA_KERNELS = ("flash", "efficient", "cudnn", "math")


def attention_flops(batch: int, seq_len: int, heads: int, head_dim: int, backward: bool) -> float:
    """FlashAttention's count: 4·B·L²·H·Dh for q·kᵀ and p·v, halved for causal; bwd = 2.5 fwd
    (harness.roofline holds the count, with the bytes the GPU check's predictions use)."""
    return roofline.attention_work(batch, seq_len, heads, head_dim, backward).flops


def attention_impls(device: torch.device) -> dict[str, Callable]:
    impls = {f"sdpa_{k}": (lambda q, k_, v, kernel=k: attention_sdpa(q, k_, v, kernel=kernel))
             for k in SDPA_KERNELS if device.type == "cuda" or k in ("math", "flash")}
    impls["sdpa_auto"] = lambda q, k, v: attention_sdpa(q, k, v)  # on a CPU: small heads -> cpu_small_heads
    if device.type == "cpu" and attention_fused_cpu.kernel_available():
        impls["cpu_small_heads"] = lambda q, k, v: attention_fused_cpu.causal_attention_cpu(q, k, v)
    if device.type == "cuda" and flash_attn_available():
        impls["flash_attn"] = lambda q, k, v: attention_flash(q, k, v)
    impls["attention_math"] = lambda q, k, v: attention_math(q, k, v)
    return impls


def _workload(fn: Callable, inputs: list[torch.Tensor], backward: bool) -> Callable[[], object]:
    grad = torch.randn_like(inputs[0]) if backward else None

    def run():
        out = fn(*inputs)
        if backward:
            out.backward(grad)
        return out
    return run


def _inputs(shape: tuple[int, ...], n: int, device, dtype, requires_grad: bool) -> list[torch.Tensor]:
    return [torch.randn(shape, device=device, dtype=dtype, requires_grad=requires_grad) for _ in range(n)]


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        self.dtype = DTYPES[args.dtype]
        self.store = ResultStore(args.out)
        self.peak, _, self.peak_source = device_peak(self.device, self.dtype)

    def point(self, impl: str, mode: str, seq_len: int, batch: int, flops: float, work: Callable,
              **extra) -> None:
        settings = {"impl": impl, "mode": mode, "seq_len": seq_len, "batch": batch, "dtype": self.args.dtype,
                    "device": device_name(self.device), **extra}
        key = point_key(settings, f"{impl}-{mode}-{seq_len}")
        if self.store.has_valid(key) and not self.args.force:
            return
        common = dict(arch=impl, backend=impl, seq_len=seq_len, batch=batch, dtype=self.args.dtype, mode=mode,
                      device=device_name(self.device), experiment=f"kernels_{self.args.suite}",
                      point_key=key, settings=settings, flops_analytic=flops, **extra)
        try:
            timing = time_callable(work(), device=self.device, warmup=self.args.warmup,
                                   min_run_time=self.args.min_run_time)
            rate = flops / (timing.median_ms / 1e3)
            row = make_row(**timing.as_row(), achieved_flops_per_s=rate, tflops=rate / 1e12,
                           frac_peak_flops=rate / self.peak if self.peak else None,
                           peak_source=self.peak_source if self.peak else None, **common)
        except Exception as exc:  # noqa: BLE001 - a kernel that cannot run the case is a row
            status, reason = classify_exception(exc)
            free_memory(exc)
            row = make_row(status=status, reason=reason, **common)
        self.store.write(row, key)
        print(f"{impl:16s} {mode:22s} L={seq_len:6d} B={batch:3d} {row['status']:6s} "
              f"{row.get('tflops') or 0:8.3f} TFLOP/s {row['reason']}", flush=True)

    def attention(self) -> None:
        a = self.args
        for head_dim in a.head_dims:
            heads = a.hidden // head_dim
            for seq_len in a.seq_lens:
                batch = max(1, a.tokens // seq_len)
                shape = (batch, heads, seq_len, head_dim)
                for impl, fn in attention_impls(self.device).items():
                    if a.impls and impl not in a.impls:
                        continue
                    for backward in (False, True):
                        mode = f"attention_{'fwd_bwd' if backward else 'fwd'}_hd{head_dim}"
                        work = lambda fn=fn, bw=backward: _workload(  # noqa: E731
                            fn, _inputs(shape, 3, self.device, self.dtype, bw), bw)
                        self.point(impl, mode, seq_len, batch, attention_flops(batch, seq_len, heads, head_dim,
                                                                               backward), work,
                                   head_dim=head_dim, heads=heads)

    def scan_vs_attention(self) -> None:
        from archs.mamba import mamba_ssm_available, selective_scan_chunked
        from archs.mamba.chunked import resolve_form
        from archs.mamba.fused import selective_scan_fused as selective_scan_fast
        a = self.args
        d_inner, n = a.hidden, a.d_state
        fused = self.device.type == "cuda" and mamba_ssm_available()
        scans = {"mamba_ssm_scan": selective_scan_fast} if fused else {"chunked_scan": selective_scan_chunked}
        if a.impls:  # explicit choice; the torch.compile'd chunked scan only when asked for
            # chunked_scan picks its form by device (doubling on a GPU); _steps forces the
            # one-op-per-step form, the GPU's form before 2026-12-04, for comparison
            scans = {"mamba_ssm_scan": selective_scan_fast, "chunked_scan": selective_scan_chunked,
                     "chunked_scan_steps": functools.partial(selective_scan_chunked, form="steps"),
                     "chunked_scan_compiled": torch.compile(selective_scan_chunked, dynamic=False),
                     "triton_scan": _triton_scan,  # archbench's Triton kernels (fused_impl=triton)
                     "triton_scan_tiled": functools.partial(_triton_scan, tiled=True)}  # (=triton_tiled)
            scans = {k: f for k, f in scans.items() if k in a.impls}
        heads = a.hidden // 64
        for seq_len in a.seq_lens:
            for scan_impl, scan_fn in scans.items():
                def scan_work(L=seq_len, scan_fn=scan_fn):
                    u, delta = _inputs((1, d_inner, L), 2, self.device, self.dtype, True)
                    B, C = _inputs((1, n, L), 2, self.device, self.dtype, True)
                    A = -torch.rand(d_inner, n, device=self.device).requires_grad_()
                    return _workload(lambda *_: scan_fn(u, delta, A, B, C, delta_softplus=True), [u], True)
                # the chunked scan's form (steps / doubling) is in the row and its key: the
                # same name measured one form on a GPU before 2026-12-04 and another since
                form = ({"scan_form": "steps" if scan_impl == "chunked_scan_steps"
                         else resolve_form("auto", self.device)}
                        if scan_impl.startswith("chunked_scan") else {})
                # per token and channel: ~7 FLOPs per state entry, x3 for forward + backward
                self.point(scan_impl, "scan_vs_attention_fwd_bwd", seq_len, 1,
                           roofline.scan_work(1, seq_len, d_inner, n, True).flops, scan_work,
                           d_inner=d_inner, d_state=n, **form)
            if a.impls and "sdpa_attention" not in a.impls:
                continue
            attn_work = lambda L=seq_len: _workload(lambda q, k, v: attention_sdpa(q, k, v),  # noqa: E731
                                                    _inputs((1, heads, L, 64), 3, self.device, self.dtype, True), True)
            self.point("sdpa_attention", "scan_vs_attention_fwd_bwd", seq_len, 1,
                       attention_flops(1, seq_len, heads, 64, True), attn_work, heads=heads, head_dim=64)


def _triton_scan(*args, **kwargs):
    """archs/mamba/triton_scan.py's scan, imported at the call (it imports triton): where
    triton is missing the point is an error row naming it, the others still run."""
    from archs.mamba.triton_scan import selective_scan_triton
    return selective_scan_triton(*args, **kwargs)


def report(out: Path) -> None:
    """Figures and a table from the result files alone."""
    import seaborn as sns
    from matplotlib.figure import Figure

    df = load_rows(out)
    if df.empty:
        return
    ok = df[df["status"] == "ok"]
    lines = ["# Kernel benchmarks", "", f"device: {', '.join(sorted(set(df['device'])))}", ""]
    for mode, rows in ok.groupby("mode"):
        pivot = rows.pivot_table(index="seq_len", columns="arch",
                                 values="tflops" if "scan" not in mode else "time_ms")
        lines += [f"## {mode} ({'TFLOP/s' if 'scan' not in mode else 'ms'})", "", markdown_table(pivot.round(3).reset_index()), ""]
        with sns.axes_style("whitegrid"):
            fig = Figure(figsize=(6.4, 4.4), layout="constrained")
            ax = fig.subplots()
            for impl, curve in pivot.items():
                ax.plot(curve.dropna().index, curve.dropna().to_numpy(), marker="o", ms=4, label=impl)
            ax.set_xscale("log", base=2)
            ax.set(xlabel="sequence length (tokens)", ylabel="TFLOP/s" if "scan" not in mode else "time (ms)",
                   title=mode)
            if "scan" in mode:
                ax.set_yscale("log")
            ax.legend(fontsize="small")
            fig.savefig(out / f"{mode}.png", dpi=130)
        if "scan" in mode and "sdpa_attention" in set(rows["arch"]):
            for a in sorted(set(rows["arch"]) - {"sdpa_attention"}):
                c = crossover(rows.assign(label=rows["arch"]), a, "sdpa_attention")
                lines += [f"crossover {a} / sdpa_attention: {'none' if c.x is None else f'{c.x:,.0f} tokens'} "
                          f"({c.method})", ""]
    atomic_write(out / "report.md", "\n".join(lines))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("suite", choices=("attention", "scan_vs_attention"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--seq-lens", type=int, nargs="+", default=None)
    p.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    p.add_argument("--hidden", type=int, default=2048, help="total width (heads x head dim; scan channels)")
    p.add_argument("--tokens", type=int, default=16384, help="batch x length, held constant")
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--min-run-time", type=float, default=0.5)
    p.add_argument("--quick", action="store_true", help="CPU-sized: hidden 128, lengths 64..256")
    p.add_argument("--impls", nargs="+", default=None,
                   help="run only these implementations (attention: sdpa_flash, sdpa_cudnn, flash_attn, ...; "
                        "scan_vs_attention: chunked_scan, chunked_scan_steps, chunked_scan_compiled, mamba_ssm_scan, "
                        "triton_scan, triton_scan_tiled, "
                        "sdpa_attention)")
    p.add_argument("--force", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    if args.quick:
        args.hidden, args.tokens, args.head_dims = 128, 512, [32]
        args.seq_lens = args.seq_lens or [64, 128, 256]
        args.warmup, args.min_run_time = 1, 0.05
    if args.seq_lens is None:
        args.seq_lens = ([512, 1024, 2048, 4096, 8192, 16384] if args.suite == "attention"
                         else [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536])
    if args.out is None:
        tag = "cpu" if not cuda else device_name(args.device).lower().replace(" ", "_")
        args.out = ROOT / "results" / tag / "kernels"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    getattr(bench, args.suite)()
    report(args.out)
    print(f"rows, figures and report.md in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
