"""What each GPU figure should be on an H100 and an H200, so a first GPU run says at once
"as expected" or "x times off, here".

A roofline: no kernel runs faster than its FLOPs at the device's peak FLOP/s, nor than its
bytes at the peak memory bandwidth, so ``time >= max(FLOPs / peak, bytes / bandwidth)``.
The peaks are the datasheets' (``harness.devices``: dense bf16 989 TFLOP/s on both; HBM
3.35 TB/s on the H100 SXM, 4.8 TB/s on the H200). The counts are the project's own:

* attention kernels: FlashAttention's FLOP count (the rows' ``flops_analytic``) and the
  bytes of reading q, k, v and writing the output (4 tensors; forward + backward: 12);
* the selective scan: the benchmark's count (~7 FLOPs per state entry, x3 with the
  backward), on the CUDA cores (fp32, not tensor cores), and the bytes of its inputs and
  outputs - the state never leaves on-chip memory in the fused kernel;
* whole models (the cost and generation rows): the analytic FLOPs of ``archs.model``
  (``flops_analytic``) and, counted from the model built on the meta device, every weight
  read once, every ``nn.Linear`` reading its input and writing its output (read once more
  by the next op; an MoE expert for top_k / n_experts of the tokens), and, when decoding,
  the state or KV cache read once per token. Elementwise traffic is assumed fused away:
  the bound is a floor.

Where a published measurement exists, the prediction is anchored to it instead of the
bare roofline: attention kernels run at FlashAttention-2's efficiency on an H100 (335 of
989 TFLOP/s: forward, causal, head dim 128, 16K tokens; FlashAttention-3 reaches 616), and
the fused scan is as slow as the Mamba paper's crossover implies (it equals
FlashAttention-2's forward + backward at ~2K tokens, then grows linearly). Every
prediction says which basis it used.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Mapping

from harness.devices import GpuSpec, lookup_gpu, precision_key

TARGETS: dict[str, GpuSpec] = {"H100": lookup_gpu("H100 SXM"), "H200": lookup_gpu("H200")}
# Published anchors (H100 SXM, bf16; FlashAttention-3 paper, Shah et al. 2024, Fig. 5).
FA2_TFLOPS = 335.0  # FlashAttention-2: forward, causal, head dim 128, 16K tokens
FA3_TFLOPS = 616.0  # FlashAttention-3, same setting
# Mamba (Gu & Dao 2023, Fig. 8): the fused scan beats FlashAttention-2 beyond ~2K tokens.
SCAN_CROSSOVER = 2048
_ELEM = {"bf16": 2, "fp16": 2, "tf32": 4, "fp32": 4}


@dataclass(frozen=True)
class Work:
    """What a call must do: FLOPs (on tensor cores unless ``cuda_cores``) and bytes moved."""
    flops: float
    bytes: float
    cuda_cores: bool = False

    def seconds(self, spec: GpuSpec, precision: str = "bf16") -> float:
        """The roofline time on ``spec``: the larger of the compute and the memory bound."""
        peak = spec.fp32 if self.cuda_cores else getattr(spec, precision)
        return max(self.flops / (peak * 1e12), self.bytes / (spec.mem_tbps * 1e12))

    def bound(self, spec: GpuSpec, precision: str = "bf16") -> str:
        peak = spec.fp32 if self.cuda_cores else getattr(spec, precision)
        return "FLOPs" if self.flops / peak >= self.bytes / spec.mem_tbps else "HBM"


def attention_work(batch: int, seq_len: int, heads: int, head_dim: int, backward: bool,
                   elem: int = 2) -> Work:
    """FlashAttention's count (causal: half of 4·B·L²·H·Dh; backward = 2.5x forward) and
    the bytes of q, k, v and the output (backward: also dO, and dq, dk, dv; q, k, v, o again)."""
    flops = 4 * batch * seq_len**2 * heads * head_dim / 2 * (3.5 if backward else 1.0)
    return Work(flops, (12 if backward else 4) * batch * seq_len * heads * head_dim * elem)


def scan_work(batch: int, seq_len: int, d_inner: int, d_state: int, backward: bool,
              elem: int = 2) -> Work:
    """The selective scan: ~7 FLOPs per state entry and token (x3 with the backward) on the
    CUDA cores; bytes of u, delta, B, C in and y out (backward: dy in, du, ddelta, dB, dC out,
    u, delta, B, C again)."""
    flops = 7 * batch * seq_len * d_inner * d_state * (3 if backward else 1)
    width = (8 * d_inner + 6 * d_state) if backward else (3 * d_inner + 2 * d_state)
    return Work(flops, batch * seq_len * width * elem, cuda_cores=True)


# --- whole models ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=32)
def _meta_model(arch: str, kwargs_json: str):
    """The row's model on the meta device (no memory, no init); "backend" is dropped: the
    counts do not depend on it, and a fused backend's packages need not be here."""
    from archs import create_arch
    from archs.sizing import build_meta

    kwargs = {k: v for k, v in json.loads(kwargs_json).items() if k != "backend"}
    return build_meta(lambda **kw: create_arch(arch, **kw), kwargs)


def _activation_bytes_per_token(model) -> float:
    """Elements every nn.Linear reads (its input) and writes (its output, read once more by
    the next op) per token; an MoE expert sees top_k / n_experts of the tokens."""
    from torch import nn

    from archs.blocks import MoE

    share = {}
    for module in model.modules():
        if isinstance(module, MoE):
            for expert in module.experts:
                share.update({id(m): module.top_k / module.n_experts for m in expert.modules()})
    return sum((m.in_features + 2 * m.out_features) * share.get(id(m), 1.0)
               for m in model.modules() if isinstance(m, nn.Linear))


def model_work(arch: str, kwargs_json: str, mode: str, batch: int, seq_len: int, dtype: str,
               gen_tokens: int = 0) -> Work:
    """FLOPs and bytes of one cost-app call (forward, train_step, decode or generate)."""
    import torch

    model = _meta_model(arch, kwargs_json)
    elem = _ELEM[precision_key(dtype)]
    weights = sum(p.numel() for p in model.parameters()) * elem
    acts = _activation_bytes_per_token(model) * elem
    fwd = Work(model.analytic_flops(batch, seq_len), weights + acts * batch * seq_len)
    if mode == "forward":
        return fwd
    if mode == "train_step":  # backward ~ 2x forward: dX and dW, each reading what forward did
        return Work(3 * fwd.flops, 3 * fwd.bytes)

    def step(context: int) -> Work:  # one token: weights, its activations, the state read once
        state = model.expected_state_bytes(batch, context, getattr(torch, dtype)) or 0
        flops = model.analytic_flops(batch, context + 1) - model.analytic_flops(batch, context)
        return Work(flops, weights + acts * batch + state)
    if mode == "decode":
        return step(seq_len)
    if mode == "generate":  # the prompt, then gen_tokens steps (context at their middle)
        mid = step(seq_len + gen_tokens // 2)
        return Work(fwd.flops + gen_tokens * mid.flops, fwd.bytes + gen_tokens * mid.bytes)
    raise ValueError(f"no work model for mode {mode!r}")


# --- one prediction per result row ------------------------------------------------------------

def target_of(device: str | None) -> str | None:
    """"H100" / "H200" when a row's device is one of them (its measured/predicted ratio)."""
    spec = lookup_gpu(device or "")
    return next((name for name, s in TARGETS.items() if s == spec), None)


def _fa2(work: Work) -> Work:
    """The work as FlashAttention-2 does it: its FLOPs at its H100 efficiency (335 of 989
    TFLOP/s), carried to other sizes and to the H200; its bytes at full bandwidth."""
    return Work(work.flops * TARGETS["H100"].bf16 / FA2_TFLOPS, work.bytes, work.cuda_cores)


def _attention_pred(work: Work, precision: str) -> tuple[dict[str, float], str]:
    seconds = {name: _fa2(work).seconds(spec, precision) for name, spec in TARGETS.items()}
    return seconds, f"FA-2 anchor: {FA2_TFLOPS:.0f} of {TARGETS['H100'].bf16:.0f} TFLOP/s"


def _scan_pred(row: Mapping[str, Any], work: Work, precision: str) -> tuple[dict[str, float], str]:
    if row["arch"] != "mamba_ssm_scan":  # an unfused scan: the bare roofline of the fused one
        return ({n: work.seconds(s, precision) for n, s in TARGETS.items()},
                f"roofline of the fused scan ({work.bound(TARGETS['H100'])}-bound)")
    d, n = int(row["d_inner"]), int(row["d_state"])
    at_cross = scan_work(1, SCAN_CROSSOVER, d, n, True)
    attn = _fa2(attention_work(1, SCAN_CROSSOVER, d // 64, 64, True))  # the benchmark's heads of 64
    # the scan's time at the crossover = FlashAttention-2's there; linear in L from there
    seconds = {name: attn.seconds(s, precision) * work.seconds(s, precision) / at_cross.seconds(s, precision)
               for name, s in TARGETS.items()}
    return seconds, f"Mamba anchor: = FA-2 fwd+bwd at L={SCAN_CROSSOVER}, linear in L"


def predict(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """{"H100": value, "H200": value, "unit", "basis", "measured"} for a result row in the unit
    of its figure (TFLOP/s for attention kernels, ms for scans and models, tokens/s for
    generation), or None for rows no roofline describes (accuracy, failed points)."""
    mode, dtype = str(row.get("mode") or ""), str(row.get("dtype") or "bfloat16")
    precision = precision_key(dtype)
    elem = _ELEM[precision]
    batch, length = int(row.get("batch") or 1), int(row.get("seq_len") or 0)
    if mode.startswith("attention_") or (mode.startswith("scan_vs_attention") and row.get("arch") == "sdpa_attention"):
        work = attention_work(batch, length, int(row["heads"]), int(row["head_dim"]), "bwd" in mode, elem)
        seconds, basis = _attention_pred(work, precision)
        if mode.startswith("attention_"):
            return dict(unit="TFLOP/s", basis=basis, measured=row.get("tflops"),
                        **{n: work.flops / s / 1e12 for n, s in seconds.items()})
    elif mode.startswith("scan_vs_attention"):
        seconds, basis = _scan_pred(row, scan_work(batch, length, int(row["d_inner"]), int(row["d_state"]),
                                                   True, elem), precision)
    elif mode in ("forward", "train_step", "decode", "generate") and row.get("arch_kwargs"):
        gen = int(row.get("gen_tokens") or 0)
        work = model_work(str(row["arch"]), str(row["arch_kwargs"]), mode, batch, length, dtype, gen)
        seconds = {n: work.seconds(s, precision) for n, s in TARGETS.items()}
        basis = f"roofline ({work.bound(TARGETS['H100'], precision)}-bound on the H100)"
        if mode == "generate":
            return dict(unit="tokens/s", basis=basis, measured=row.get("tokens_per_s"),
                        **{n: batch * gen / s for n, s in seconds.items()})
    else:
        return None
    return dict(unit="ms", basis=basis, measured=row.get("time_ms"),
                **{n: s * 1e3 for n, s in seconds.items()})


def times_off(pred: Mapping[str, Any], device: str | None) -> float | None:
    """Measured time / predicted time on the row's own device (1 = as predicted; 3 = three
    times slower than predicted); None off the targets (a CPU dry run)."""
    target, measured = target_of(device), pred.get("measured")
    if target is None or not measured:
        return None
    ratio = float(measured) / pred[target]
    return 1 / ratio if pred["unit"] in ("TFLOP/s", "tokens/s") else ratio


def describe_targets() -> str:
    """One line naming the peaks the predictions use."""
    return "; ".join(f"{n}: {s.bf16:.0f} TFLOP/s bf16 dense, {s.mem_tbps:g} TB/s HBM ({s.source})"
                     for n, s in TARGETS.items())


__all__ = ["FA2_TFLOPS", "FA3_TFLOPS", "SCAN_CROSSOVER", "TARGETS", "Work", "attention_work",
           "describe_targets", "model_work", "predict", "scan_work", "target_of", "times_off"]
