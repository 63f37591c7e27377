"""harness.roofline: the H100 / H200 predictions the GPU check prints beside each figure."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from archs import create_arch
from harness.counters import count_flops
from harness.roofline import (FA2_TFLOPS, SCAN_CROSSOVER, TARGETS, Work, attention_work, model_work,
                              predict, scan_work, target_of, times_off)
from tests.paths import ROOT

H100, H200 = TARGETS["H100"], TARGETS["H200"]
GPT2_SMALL = json.dumps(dict(vocab_size=50304, n_layers=12, d_model=768))


def test_targets_are_the_published_peaks():
    assert (H100.bf16, H100.mem_tbps) == (989.4, 3.35) and (H200.bf16, H200.mem_tbps) == (989.4, 4.8)
    assert target_of("NVIDIA H100 80GB HBM3") == "H100" and target_of("NVIDIA H200") == "H200"
    assert target_of("AMD EPYC 7B13") is None


def test_roofline_is_the_larger_bound():
    compute = Work(flops=989.4e12, bytes=1e9)  # 1 s of FLOPs, 0.3 ms of bytes
    memory = Work(flops=1e9, bytes=4.8e12)
    assert compute.seconds(H100) == pytest.approx(1.0) == compute.seconds(H200)
    assert memory.seconds(H200) == pytest.approx(1.0) and memory.seconds(H100) == pytest.approx(4.8 / 3.35)
    assert (compute.bound(H100), memory.bound(H100)) == ("FLOPs", "HBM")
    # CUDA-core work runs at the fp32 peak, not the tensor cores'
    assert Work(66.9e12, 0, cuda_cores=True).seconds(H100) == pytest.approx(1.0)


def test_attention_prediction_reproduces_its_anchor():
    row = dict(mode="attention_fwd_hd128", arch="sdpa_flash", dtype="bfloat16", batch=1, seq_len=16384,
               heads=16, head_dim=128, tflops=FA2_TFLOPS / 2, device="NVIDIA H100 80GB HBM3")
    pred = predict(row)
    assert pred["unit"] == "TFLOP/s" and pred["H100"] == pytest.approx(FA2_TFLOPS)
    assert pred["H200"] == pytest.approx(FA2_TFLOPS)  # compute-bound: the same peak
    assert times_off(pred, row["device"]) == pytest.approx(2.0)  # half the rate = twice the time
    # FlashAttention's count: causal half of 4 B L^2 H d; backward 2.5x forward
    assert attention_work(2, 1024, 4, 64, True).flops == pytest.approx(3.5 * 4 * 2 * 1024**2 * 4 * 64 / 2)


def test_scan_prediction_crosses_attention_at_the_mamba_anchor():
    def pred(arch, n, **kw):
        return predict(dict(mode="scan_vs_attention_fwd_bwd", arch=arch, dtype="bfloat16", batch=1,
                            seq_len=n, time_ms=1.0, **kw))
    scan = {n: pred("mamba_ssm_scan", n, d_inner=2048, d_state=16)["H100"] for n in (1024, 2048, 4096)}
    attn = {n: pred("sdpa_attention", n, heads=32, head_dim=64)["H100"] for n in (1024, 2048, 4096)}
    assert scan[SCAN_CROSSOVER] == pytest.approx(attn[SCAN_CROSSOVER])
    assert scan[1024] > attn[1024] and scan[4096] < attn[4096]
    assert scan[4096] / scan[2048] == pytest.approx(2, rel=0.01)  # linear in L
    # the scan's bytes: the fused kernel keeps its state on chip
    assert scan_work(1, 10, 8, 2, False, elem=2).bytes == 10 * (3 * 8 + 2 * 2) * 2


def test_model_counts_match_the_models_and_the_flop_counter():
    tiny = dict(vocab_size=64, n_layers=2, d_model=32)
    model = create_arch("transformer", **tiny)
    fwd = model_work("transformer", json.dumps(tiny), "forward", 2, 64, "float32")
    assert fwd.flops == model.analytic_flops(2, 64)
    counted = int(count_flops(lambda: model(torch.zeros(2, 64, dtype=torch.long))))
    # the counter charges SDPA the full L x L scores, the analytic count their causal half:
    # 4 B L^2 d / 2 per layer apart
    assert counted - fwd.flops == pytest.approx(2 * 4 * 2 * 64**2 * 32 / 2, rel=0.02)
    weights = sum(p.numel() for p in model.parameters()) * 4
    assert fwd.bytes > weights
    train = model_work("transformer", json.dumps(tiny), "train_step", 2, 64, "float32")
    assert (train.flops, train.bytes) == (3 * fwd.flops, 3 * fwd.bytes)


def test_decoding_is_memory_bound_and_faster_on_the_h200():
    row = dict(mode="generate", arch="transformer", arch_kwargs=GPT2_SMALL, dtype="bfloat16", batch=1,
               seq_len=2048, gen_tokens=128, tokens_per_s=100.0, device="NVIDIA H200")
    pred = predict(row)
    assert pred["unit"] == "tokens/s" and "HBM-bound" in pred["basis"]
    assert 1.3 < pred["H200"] / pred["H100"] < 4.8 / 3.35 + 1e-9
    assert times_off(pred, row["device"]) == pytest.approx(pred["H200"] / 100.0)
    # a 125M model reads its ~250 MB of bf16 weights per token: ~10K tokens/s at 3.35 TB/s
    assert 5_000 < pred["H100"] < 15_000
    long = model_work("transformer", GPT2_SMALL, "decode", 1, 65536, "bfloat16")
    short = model_work("transformer", GPT2_SMALL, "decode", 1, 1024, "bfloat16")
    assert long.bytes > short.bytes  # the KV cache grows; a recurrent state would not
    flat = [model_work("mamba2", json.dumps(dict(vocab_size=256, n_layers=2, d_model=64)), "decode", 1, n,
                       "bfloat16").bytes for n in (1024, 65536)]
    assert flat[0] == flat[1]


def test_rows_without_a_cost_get_no_prediction():
    assert predict(dict(mode="eval", arch="mamba", accuracy=1.0)) is None
    assert times_off(dict(unit="ms", measured=1.0, H100=1.0, H200=1.0), "AMD EPYC") is None


def test_gpu_summary_puts_predictions_beside_measurements():
    import pandas as pd
    sys.path.insert(0, str(ROOT / "scripts"))
    from gpu_summary import predicted_table

    rows = pd.DataFrame([dict(mode="forward", seq_len=2048, arch="transformer", backend="fused",
                              arch_kwargs=GPT2_SMALL, dtype="bfloat16", batch=1, time_ms=3.0,
                              device="NVIDIA H100 80GB HBM3", heads=float("nan"))])
    table = predicted_table(rows, ["mode", "seq_len", "arch", "backend"]).splitlines()
    head, row = table[0].split(" | "), table[2].split(" | ")
    pred = predict(dict(rows.iloc[0].drop("heads")))
    assert row[head.index("measured")] == "3 ms"
    assert float(row[head.index("H100 predicted")]) == pytest.approx(pred["H100"], rel=1e-2)
    assert float(row[head.index("measured / predicted time")]) == pytest.approx(3.0 / pred["H100"], rel=1e-2)
