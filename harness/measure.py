"""What one cost point measures: a forward pass, a training step, or one decode step.

* ``forward``    - inference prefill of (batch, L) tokens under ``torch.inference_mode``;
* ``train_step`` - forward + cross-entropy (+ MoE aux loss) + backward (+ AdamW.step if
  ``bench.optimizer_step``); for a count-based model (``archs.counting``), counting the
  batch (its training step);
* ``generate``   - the Mamba paper's generation protocol: prefill an L-token prompt, then
  greedily generate ``bench.gen_tokens`` tokens; tokens/s counts generated tokens only
  (batch x gen_tokens / total time, prompt processing included in the time);
* ``decode``     - one new token given a context of L tokens, with the architecture's own
  cache or recurrent state. The context is prefilled once (untimed); then
  ``bench.decode_steps`` consecutive steps are timed, so the context grows from L to
  L + warmup + decode_steps during the measurement (recorded as ``decode_context_end``;
  below 7% at L >= 256 with the defaults). Rewinding a cache between repetitions would
  need a state API every mixer implements; consecutive steps are what generation does.

Time comes from ``harness.timing.time_callable`` (torch.utils.benchmark on CPU, CUDA
events on GPU), memory from ``peak_memory`` and FLOPs from ``FlopCounterMode`` with the
closed-form count beside it (``flops_analytic``: forward = the model's analytic count,
train_step = 3x forward, decode = the increment from L to L+1 tokens).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from archs.counting import trains_by_counting
from harness.config import DTYPES, BenchConfig
from harness.counters import count_flops, peak_memory
from harness.devices import device_peak
from harness.timing import time_callable


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward_fn(model, tokens: torch.Tensor) -> Callable[[], Any]:
    def forward():
        with torch.inference_mode():
            return model(tokens)
    return forward


def _train_fn(model, tokens: torch.Tensor, optimizer_step: bool) -> Callable[[], Any]:
    if trains_by_counting(model):  # a count-based model's training step is counting a batch
        return lambda: model.count(tokens[:, :-1], tokens[:, 1:])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if optimizer_step else None

    def train_step():
        logits = model(tokens)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())
        aux = model.aux_loss()
        if aux is not None:
            loss = loss + 0.01 * aux
        loss.backward()
        if opt is not None:
            opt.step()
        # Gradients are kept between calls (allocated once, as in real training).
        return loss
    return train_step


def _decode_fn(model, tokens: torch.Tensor, device: torch.device):
    """Prefill a context of L tokens; return (one-step fn, state holder)."""
    with torch.inference_mode():
        _, state = _prefill_chunked(model, tokens)
    holder = {"state": state, "steps": 0}
    next_token = tokens[:, -1].clone()

    def decode_step():
        with torch.inference_mode():
            logits, holder["state"] = model.step(next_token, holder["state"])
        holder["steps"] += 1
        return logits
    return decode_step, holder


def _prefill_chunked(model, tokens: torch.Tensor):
    state = model.init_state(tokens.shape[0])
    chunk = 8192  # prefill long contexts in chunks: same state, bounded activations
    logits = None
    for start in range(0, tokens.shape[1], chunk):
        logits, state = model.prefill(tokens[:, start:start + chunk], state)
    return logits, state


def _generate_fn(model, tokens: torch.Tensor, gen_tokens: int) -> Callable[[], Any]:
    def generate():
        with torch.inference_mode():
            logits, state = _prefill_chunked(model, tokens)
            token = logits[:, -1].argmax(dim=-1)
            for _ in range(gen_tokens):
                logits, state = model.step(token, state)
                token = logits.argmax(dim=-1)
        return token
    return generate


def analytic_flops(model, mode: str, batch: int, seq_len: int, gen_tokens: int = 0) -> int | None:
    fwd = model.analytic_flops(batch, seq_len)
    if fwd is None:
        return None
    if mode == "forward":
        return fwd
    if mode == "train_step":
        return 3 * fwd  # backward ~ 2x forward (gradients w.r.t. activations and weights)
    if mode == "generate":  # the prompt, then each new token's increment
        return model.analytic_flops(batch, seq_len + gen_tokens)
    nxt = model.analytic_flops(batch, seq_len + 1)
    return None if nxt is None else nxt - fwd


def benchmark_tokens(model, batch: int, seq_len: int, device: torch.device) -> torch.Tensor:
    """Random input tokens, seeded by the length; in the model's own layout if it has one
    (an encoder-decoder: source, separator, target - ``model.benchmark_tokens``)."""
    gen = torch.Generator(device="cpu").manual_seed(seq_len)
    layout = getattr(model, "benchmark_tokens", None)
    if layout is not None:
        return layout(batch, seq_len, gen).to(device)
    return torch.randint(0, model.cfg.vocab_size, (batch, seq_len), generator=gen).to(device)


def measure(model, mode: str, seq_len: int, bench: BenchConfig, device: torch.device) -> dict[str, Any]:
    """Measure one (mode, length) point of ``model`` (already on ``device`` in bench.dtype)."""
    tokens = benchmark_tokens(model, bench.batch, seq_len, device)
    row: dict[str, Any] = {}
    holder = None
    if mode == "forward":
        fn = _forward_fn(model, tokens)
    elif mode == "train_step":
        model.zero_grad(set_to_none=True)
        fn = _train_fn(model, tokens, bench.optimizer_step)
    elif mode == "generate":
        fn = _generate_fn(model, tokens, bench.gen_tokens)
        row["gen_tokens"] = bench.gen_tokens
    else:
        fn, holder = _decode_fn(model, tokens, device)
        row["state_bytes"] = model.state_size_bytes(holder["state"])
    if mode != "decode":
        with torch.inference_mode():
            state = model.init_state(bench.batch)
        row["state_bytes"] = model.expected_state_bytes(bench.batch, seq_len, DTYPES[bench.dtype])
        del state
    row["state_bytes_analytic"] = model.expected_state_bytes(bench.batch, seq_len, DTYPES[bench.dtype])

    timing = time_callable(fn, device=device, warmup=bench.warmup,
                           **({"repeats": max(bench.decode_steps, bench.min_repeats)} if mode == "decode"
                              else {"min_run_time": bench.min_run_time}),
                           min_repeats=bench.min_repeats, flush_l2=bench.flush_l2,
                           compile_allowance_s=bench.compile_allowance_s)
    row.update(timing.as_row())
    tokens_per_call = bench.batch * {"decode": 1, "generate": bench.gen_tokens}.get(mode, seq_len)
    row["tokens_per_s"] = tokens_per_call / (timing.median_ms / 1e3)
    if holder is not None:
        row["decode_context_end"] = seq_len + holder["steps"]
    if bench.measure_memory:
        row.update(peak_memory(fn, device).as_row())
    if bench.count_flops:
        row.update(count_flops(fn).as_row())
    row["flops_analytic"] = analytic_flops(model, mode, bench.batch, seq_len, bench.gen_tokens)
    _achieved(row, model, mode, bench, device, timing.median_ms)
    model.zero_grad(set_to_none=True)
    return row


def _achieved(row: dict, model, mode: str, bench: BenchConfig, device: torch.device, median_ms: float) -> None:
    """Achieved FLOP/s (analytic count preferred: it sees every kernel) and, on a known GPU,
    the fraction of the device's peak; for decode, the bytes a step must read (weights +
    state) per second against the peak bandwidth - decode is memory-bound."""
    flops = row.get("flops_analytic") or row.get("flops")
    peak_flops, peak_bw, source = device_peak(device, DTYPES[bench.dtype])
    seconds = median_ms / 1e3
    if flops:
        row["achieved_flops_per_s"] = flops / seconds
        if peak_flops:
            row["frac_peak_flops"] = row["achieved_flops_per_s"] / peak_flops
    if mode == "decode":
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        moved = weight_bytes + (row.get("state_bytes") or 0)
        row["decode_bytes_per_step"] = moved
        row["achieved_bytes_per_s"] = moved / seconds
        if peak_bw:
            row["frac_peak_bandwidth"] = row["achieved_bytes_per_s"] / peak_bw
    if peak_flops or peak_bw:
        row["peak_source"] = source


def fits_in_memory(model, mode: str, seq_len: int, bench: BenchConfig, device: torch.device,
                   budget_bytes: float) -> tuple[bool, int | None, str]:
    """One memory probe for the max_len search: (fits, peak bytes, reason)."""
    tokens = benchmark_tokens(model, bench.batch, seq_len, device)
    if mode == "forward":
        fn = _forward_fn(model, tokens)
    elif mode == "train_step":
        fn = _train_fn(model, tokens, bench.optimizer_step)
    elif mode == "generate":
        fn = _generate_fn(model, tokens, bench.gen_tokens)
    else:
        fn, _ = _decode_fn(model, tokens, device)
    peak = peak_memory(fn, device).peak_bytes
    model.zero_grad(set_to_none=True)
    if peak > budget_bytes:
        return False, peak, f"peak {peak / 2**30:.2f} GiB > budget {budget_bytes / 2**30:.2f} GiB"
    return True, peak, ""
