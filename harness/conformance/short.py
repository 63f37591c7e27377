"""The short checks: one model at a couple of dozen tokens, seconds for every architecture.

Each takes the tiny model (eval mode) and returns a one-line detail or raises
ConformanceError; ``rebuild(seed)`` (when given) builds the same model from another seed.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from archs import SequenceTooLongError
from archs.counting import trains_by_counting
from archs.model import LanguageModel

from harness.conformance._common import (BATCH, LENGTH, SPLIT, VOCAB, ConformanceError,
                                         check_deterministic, compare, describe, disagreement,
                                         in_dtype, output_scale, rtol_of, tiles_of, tokens)
from harness.conformance.causal import assert_no_leak
from harness.conformance.forms import judge, prefill_chunks, step_through

# Long enough for batch / mode checks to cross every tiny variant's tiles (4-16 tokens).
MEDIUM = 64


def check_shapes(model: LanguageModel, **_) -> str:
    logits = model(tokens())
    if logits.shape != (BATCH, LENGTH, VOCAB):
        raise ConformanceError(f"logits shape {tuple(logits.shape)} != {(BATCH, LENGTH, VOCAB)}")
    if not logits.is_floating_point() or not torch.isfinite(logits).all():
        raise ConformanceError("logits must be finite floating point")
    return f"logits {tuple(logits.shape)} {logits.dtype}"


def check_determinism(model: LanguageModel, **_) -> str:
    check_deterministic(model, tokens(length=MEDIUM), length=MEDIUM)
    return f"two forwards agree ({MEDIUM} tokens)"


def check_causality(model: LanguageModel, **_) -> str:
    """At every position of a short sequence: no gradient to a future input (exactly 0 unless
    a mixer declares exact_causality = False) and no earlier output moved by a change after it."""
    x = tokens(length=LENGTH, batch=1)
    scale = output_scale(check_deterministic(model, x, length=LENGTH))
    tiles, every = tiles_of(model), list(range(LENGTH - 1))
    # a count-based model (the n-gram) has no embeddings to differentiate: the cut test only
    kinds = ("cut",) if trains_by_counting(model) else ("gradient", "cut")
    for kind in kinds:
        assert_no_leak(model, x, kind, every, rows=LENGTH, scale=scale, tiles=tiles, length=LENGTH)
    how = "" if len(kinds) == 2 else " (by perturbation: no gradients in a count-based model)"
    return f"no output sees a later input, at every position of {LENGTH} tokens{in_dtype(model)}{how}"


def check_batch_independence(model: LanguageModel, **_) -> str:
    """Each row's output is what that row alone gives (no mixing across the batch, no
    dependence on the batch's size); a random forward is reported as such first."""
    x = tokens(seed=4, length=MEDIUM, batch=3)
    check_deterministic(model, x, length=MEDIUM)
    tiles, rtol = tiles_of(model), rtol_of(model)
    with torch.no_grad():
        together = model(x)
        for r in range(x.shape[0]):
            alone = model(x[r:r + 1])
            found = disagreement(together[r:r + 1], alone, rtol=rtol)
            if found is None:
                continue
            copies = model(x[r:r + 1].expand(x.shape[0], -1))
            if disagreement(copies[:1], alone, rtol=rtol) is not None:
                raise ConformanceError(f"output depends on the batch size{in_dtype(model, MEDIUM)}: a batch of "
                                       f"{x.shape[0]} identical copies of row {r} differs from the row alone: "
                                       f"{describe(found, tiles)}")
            raise ConformanceError(f"output depends on other rows of the batch{in_dtype(model, MEDIUM)}: row {r} "
                                   f"of a batch of {x.shape[0]} differs from the same row alone (and from "
                                   f"{x.shape[0]} copies of it): {describe(found, tiles)}")
    return f"each of 3 rows == the row alone ({MEDIUM} tokens)"


def check_train_eval(model: LanguageModel, **_) -> str:
    """Without dropout, train and eval mode compute the same function."""
    drop = [n for n, m in model.named_modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    if drop:
        return f"skipped: dropout configured ({drop[0]})"
    x = tokens(seed=5, length=MEDIUM)
    with torch.no_grad():
        eval_out = model(x)
        model.train()
        try:
            train_out = model(x)
        finally:
            model.eval()
    compare(train_out, eval_out, "train mode differs from eval mode with no dropout configured",
            tiles=tiles_of(model), rtol=rtol_of(model))
    return "train mode == eval mode"


def _incremental(model: LanguageModel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens, forward, token-by-token step, two-chunk prefill) at the short length."""
    x = tokens()
    parallel = check_deterministic(model, x, length=LENGTH)
    with torch.inference_mode():
        stepped, _ = step_through(model, x, model.init_state(BATCH))
        prefilled, _ = prefill_chunks(model, x, [SPLIT, LENGTH - SPLIT])
    return x, parallel, stepped, prefilled


PREFILL_SPLIT = f"prefill in chunks [:{SPLIT}], [{SPLIT}:]"


def check_step_matches_forward(model: LanguageModel, **_) -> str:
    x, parallel, stepped, prefilled = _incremental(model)
    judge(model, x, parallel, stepped, "token-by-token step", tiles=tiles_of(model),
          witness=(PREFILL_SPLIT, lambda m: prefilled[:, :m]))
    return f"{LENGTH} steps == parallel{in_dtype(model)}"


def check_prefill_matches_forward(model: LanguageModel, **_) -> str:
    x, parallel, stepped, prefilled = _incremental(model)
    judge(model, x, parallel, prefilled, PREFILL_SPLIT, tiles=tiles_of(model),
          witness=("token-by-token step", lambda m: stepped[:, :m]))
    return f"two-chunk prefill == parallel{in_dtype(model)}"


def check_gradients(model: LanguageModel, **_) -> str:
    if trains_by_counting(model):
        return "skipped: trained by counting (archs.counting), no gradient step"
    model.train()
    logits = model(tokens())
    loss = F.cross_entropy(logits.flatten(0, 1), tokens(seed=2).flatten())
    aux = model.aux_loss()
    (loss + (0.01 * aux if aux is not None else 0.0)).backward()
    missing, bad = [], []
    for name, p in model.named_parameters():
        if p.grad is None:
            # an MoE expert no token was routed to in this tiny batch legitimately gets none
            if ".experts." not in name:
                missing.append(name)
        elif not torch.isfinite(p.grad).all():
            bad.append(name)
    model.zero_grad(set_to_none=True)
    model.eval()
    if missing or bad:
        raise ConformanceError(f"parameters without gradient: {missing[:5]}; non-finite: {bad[:5]}")
    return "every parameter gets a finite gradient"


def check_buffers(model: LanguageModel, rebuild: Callable[[int], LanguageModel] | None = None, **_) -> str:
    """No weight hides as a buffer (never trained, missing from num_params): a floating-point
    buffer must be a constant - non-persistent or named in its module's constant_buffers -
    and, unless named there, must not depend on the random seed."""
    other = dict(rebuild(1).named_buffers()) if rebuild is not None else {}
    checked = 0
    for mod_name, module in model.named_modules():
        declared = set(getattr(module, "constant_buffers", ()))
        for name, buf in module.named_buffers(recurse=False):
            if not buf.is_floating_point() or name in declared:
                continue
            checked += 1
            path = f"{mod_name}.{name}" if mod_name else name
            fix = (f"if it is a weight, make it an nn.Parameter (a buffer is never trained and "
                   f"num_params does not count it); if it is a constant, list {name!r} in "
                   f"{type(module).__name__}.constant_buffers")
            if name not in module._non_persistent_buffers_set:
                raise ConformanceError(f"floating-point buffer {path!r} {tuple(buf.shape)} is saved "
                                       f"with the weights but is not a parameter: {fix}")
            twin = other.get(path)
            if twin is not None and twin.shape == buf.shape and not torch.equal(twin, buf):
                raise ConformanceError(f"floating-point buffer {path!r} {tuple(buf.shape)} changes "
                                       f"with the random seed, so it is a weight: {fix}")
    return f"{checked} floating-point buffer(s), all constants"


# --- state accounting -------------------------------------------------------------------------

def measured_state_bytes(state: Any, path: str = "state", seen: set | None = None) -> int:
    """Bytes of the tensors a state holds, walked directly (never the state's own nbytes()):
    dicts, lists, tuples, dataclasses and plain objects are walked; ints, floats, bools,
    strings and None are metadata (0 B) as fields, refused inside lists (they can grow
    uncounted); anything else is refused."""
    seen = set() if seen is None else seen
    if isinstance(state, torch.Tensor):
        key = (state.data_ptr(), tuple(state.shape), state.stride(), state.dtype)
        if key in seen:  # the same tensor reachable twice counts once
            return 0
        seen.add(key)
        return state.numel() * state.element_size()
    if state is None or isinstance(state, (bool, int, float, str)):
        return 0
    if isinstance(state, dict):
        return sum(measured_state_bytes(v, f"{path}[{k!r}]", seen) for k, v in state.items())
    if isinstance(state, (list, tuple)):
        if any(isinstance(v, (bool, int, float, str)) for v in state):
            raise ConformanceError(f"{path} is a {type(state).__name__} holding Python numbers, which "
                                   f"the suite cannot count (it may grow with the context): keep "
                                   f"them in a tensor")
        return sum(measured_state_bytes(v, f"{path}[{i}]", seen) for i, v in enumerate(state))
    if dataclasses.is_dataclass(state):
        return sum(measured_state_bytes(getattr(state, f.name), f"{path}.{f.name}", seen)
                   for f in dataclasses.fields(state))
    if hasattr(state, "__dict__") and not callable(state):
        return sum(measured_state_bytes(v, f"{path}.{k}", seen) for k, v in vars(state).items())
    raise ConformanceError(f"{path} is a {type(state).__name__}, which the suite cannot count: keep "
                           f"decode state in tensors (plus ints/floats/None for counters), in "
                           f"dicts, lists, tuples or dataclasses")


def check_state_size(model: LanguageModel, **_) -> str:
    """Declared == reported == measured: at a length past every declared tile (where caches
    are full), after one prefill, state_size_bytes equals the bytes of the state's tensors."""
    tiles = tiles_of(model)
    full = max([32, *tiles.values()])
    if model.max_seq_len:
        full = min(full, model.max_seq_len)
    sizes = {}
    with torch.no_grad():
        for n in (SPLIT, 2 * SPLIT, full):
            state = model.init_state(BATCH)
            _, state = model.prefill(tokens(length=n), state)
            actual = model.state_size_bytes(state)
            declared = model.expected_state_bytes(BATCH, n)
            if declared is not None and declared != actual:
                raise ConformanceError(f"declared state size {declared} B != actual {actual} B after {n} tokens")
            per_layer = []
            # a model without mixers (a count table) is checked as one layer holding the state
            layers = list(zip(model.mixers, state.layers)) if model.mixers else [(model, state)]
            for i, (m, s) in enumerate(layers):
                reported, held = m.state_size_bytes(s), measured_state_bytes(s, f"layer {i} state")
                if reported > held or (n == full and reported != held):
                    raise ConformanceError(
                        f"layer {i} ({type(m).__name__}) state_size_bytes says {reported} B but its "
                        f"state's tensors hold {held} B after {n} tokens in one prefill"
                        + (f" (past every declared tile {tiles}, so any cache is full)" if n == full else ""))
                per_layer.append(reported)
            sizes[n] = per_layer
    for i, mixer in enumerate(model.mixers or [model]):
        a, b = sizes[SPLIT][i], sizes[2 * SPLIT][i]
        growth = mixer.state_growth
        if growth == "constant" and a != b:
            raise ConformanceError(f"layer {i} declares a constant state but it grew {a} -> {b} B")
        if growth == "linear" and b != 2 * a:
            raise ConformanceError(f"layer {i} declares a linear state but {a} -> {b} B is not x2")
        if growth == "window" and b < a:
            raise ConformanceError(f"layer {i} window state shrank {a} -> {b} B")
    return (f"state bytes {sum(sizes[SPLIT])} -> {sum(sizes[2 * SPLIT])} "
            f"({', '.join(sorted({m.state_growth for m in model.mixers or [model]}))}); == tensors held at {full}")


def check_learns(model: LanguageModel, **_) -> str:
    """Memorise a small repetitive batch: the loss must fall within a few steps."""
    model.train()
    g = torch.Generator().manual_seed(3)
    pattern = torch.randint(0, VOCAB, (BATCH, 7), generator=g)
    x = pattern.repeat(1, 4)[:, : LENGTH + 1]  # (B, LENGTH+1): a period-7 sequence
    if trains_by_counting(model):
        return _learns_by_counting(model, x)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        aux = model.aux_loss()
        opt.zero_grad()
        (loss + (0.01 * aux if aux is not None else 0.0)).backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    if not losses[-1] < 0.7 * losses[0]:
        raise ConformanceError(f"loss did not fall: {losses[0]:.3f} -> {losses[-1]:.3f} in 30 steps")
    return f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def _learns_by_counting(model, x: torch.Tensor) -> str:
    """A count-based model's training step is counting: once the pattern is counted, its
    loss on the pattern must fall as a gradient-trained model's does in 30 steps."""
    with torch.no_grad():
        before = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).item()
        model.count(x[:, :-1], x[:, 1:])
        after = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).item()
    if not after < 0.7 * before:
        raise ConformanceError(f"loss did not fall after counting the pattern: {before:.3f} -> {after:.3f}")
    return f"loss {before:.3f} -> {after:.3f} after counting the pattern once"


def check_length_limit(model: LanguageModel, **_) -> str:
    limit = model.max_seq_len
    if limit is None:
        return "unbounded"
    try:
        with torch.no_grad():
            model(torch.zeros(1, limit + 1, dtype=torch.long))
    except SequenceTooLongError:
        return f"length {limit + 1} > max_seq_len={limit} raises SequenceTooLongError"
    raise ConformanceError(f"max_seq_len={limit} but a {limit + 1}-token input did not raise")
