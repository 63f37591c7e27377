"""harness.measure: what one cost point measures - the tokens a call processes, the decode
context it ends at, the analytic FLOPs of each mode and the memory probe of the max_len search."""
from __future__ import annotations

import pytest
import torch

from harness.config import BenchConfig
from harness.measure import analytic_flops, benchmark_tokens, fits_in_memory, measure

from tests.tiny import tiny_model

VOCAB = 32
CPU = torch.device("cpu")
QUICK = BenchConfig(batch=2, warmup=1, min_run_time=0.01, min_repeats=2, decode_steps=3,
                    count_flops=False, measure_memory=False)


def test_train_step_flops_are_three_forwards_and_decode_the_increment():
    model = tiny_model("transformer", VOCAB)
    fwd = model.analytic_flops(2, 16)
    assert analytic_flops(model, "forward", 2, 16) == fwd > 0
    assert analytic_flops(model, "train_step", 2, 16) == 3 * fwd
    assert analytic_flops(model, "decode", 2, 16) == model.analytic_flops(2, 17) - fwd > 0
    assert analytic_flops(model, "generate", 2, 16, gen_tokens=4) == model.analytic_flops(2, 20)


def test_benchmark_tokens_are_seeded_by_length_and_in_the_vocabulary():
    model = tiny_model("lstm", VOCAB)
    a, b = benchmark_tokens(model, 2, 24, CPU), benchmark_tokens(model, 2, 24, CPU)
    assert a.shape == (2, 24) and torch.equal(a, b) and 0 <= int(a.min()) and int(a.max()) < VOCAB
    assert not torch.equal(benchmark_tokens(model, 2, 25, CPU)[:, :24], a)


@pytest.mark.parametrize("mode", ["forward", "train_step"])
def test_a_sequence_mode_counts_every_token_of_the_batch(mode):
    model = tiny_model("lstm", VOCAB)
    row = measure(model, mode, 16, QUICK, CPU)
    assert row["time_ms"] > 0
    assert row["tokens_per_s"] == pytest.approx(2 * 16 / (row["time_ms"] / 1e3))
    assert row["flops_analytic"] == analytic_flops(model, mode, 2, 16)
    assert row["state_bytes"] == row["state_bytes_analytic"] > 0
    assert "decode_context_end" not in row
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind


def test_decode_times_one_token_per_step_from_a_growing_context():
    model = tiny_model("transformer", VOCAB)
    row = measure(model, "decode", 16, QUICK, CPU)
    assert row["tokens_per_s"] == pytest.approx(2 / (row["time_ms"] / 1e3))
    # the context grows by every step taken (warm-up and timed) after the 16 prefilled tokens
    assert row["decode_context_end"] > 16 + QUICK.decode_steps - 1
    assert row["state_bytes"] > 0 and row["decode_bytes_per_step"] > row["state_bytes"]


def test_the_memory_probe_compares_the_peak_with_the_budget():
    model = tiny_model("transformer", VOCAB)
    fits, peak, reason = fits_in_memory(model, "forward", 64, QUICK, CPU, budget_bytes=2**40)
    assert fits and peak > 0 and reason == ""
    fits, peak_again, reason = fits_in_memory(model, "forward", 64, QUICK, CPU, budget_bytes=peak / 2)
    assert not fits and "> budget" in reason
