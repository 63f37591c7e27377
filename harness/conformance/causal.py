"""Causality probes, shared by the short check (every position of a short sequence) and the
long one (positions sampled around tile boundaries):

* gradients: one backward from output position t gives d out_t / d x_j for every input
  embedding x_j; any non-zero one at j > t is a leak (exact causal forms give exactly 0;
  a mixer declaring ``exact_causality = False`` may reach GRAD_LEAK_RTOLS of the past).
  Rows of one batch are identical copies carrying different t (the backward of their sum
  is taken at once, so a gradient crossing rows shows too).
* cuts: perturb the embeddings after position c; no output <= c may move. Row 0 of the
  batch is unperturbed, row r perturbs after its own cut.

A leak seen in a batch is re-checked alone before it is reported, so a model whose rows
interact (or whose output depends on how many rows there are) is named as such.
"""
from __future__ import annotations

import torch

from archs.model import LanguageModel

from harness.conformance._common import (GRAD_LEAK_RTOLS, VOCAB, ConformanceError, dtype_of, grad_leak_rtol,
                                         in_dtype, rtol_of, tap_embeddings, where)

Leak = tuple[int, int, float]  # (output position or cut, first future / moved position, relative size)


def gradient_leaks(model: LanguageModel, x: torch.Tensor, ts: list[int]) -> list[Leak]:
    """Row r (a copy of ``x``, (1, L)) asks for output position ts[r]: (t, first leaking j > t,
    largest future gradient / largest past one) per leaking row."""
    taps: list[torch.Tensor] = []

    def keep(h: torch.Tensor) -> torch.Tensor:
        h = h.detach().requires_grad_(True)
        taps.append(h)
        return h

    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # only the inputs' gradient is wanted
        p.requires_grad_(False)
    try:
        with tap_embeddings(model, keep):
            out = model(x.expand(len(ts), -1))  # (R, L, V)
        w = torch.randn(out.shape[-1], generator=torch.Generator().manual_seed(len(ts))).to(out)
        rows = torch.arange(len(ts))
        (out[rows, torch.tensor(ts)] @ w).sum().backward()
    finally:
        for p in params:
            p.requires_grad_(True)
    grad = taps[0].grad.double().abs().amax(-1)  # (R, L): |d out_t / d x_j|
    tol, leaks = grad_leak_rtol(model), []
    for r, t in enumerate(ts):
        past = max(float(grad[r, : t + 1].max()), 1e-300)
        future = grad[r, t + 1:]
        bad = (future > tol * past).nonzero()
        if len(bad):
            leaks.append((t, t + 1 + int(bad[0]), float(future.max()) / past))
    return leaks


def cut_forward(model: LanguageModel, x: torch.Tensor, cuts: list[int | None]) -> torch.Tensor:
    """Logits (R, L, V) of R copies of ``x`` (1, L), row r with its embeddings after cuts[r]
    perturbed (None: unperturbed; a model without embeddings gets other tokens there); the
    perturbation is the same in every call."""
    n = x.shape[1]

    def perturb(h: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(7)
        noise = torch.randn(h.shape[1:], generator=g, dtype=torch.float64).to(h) * h.detach().float().std().to(h)
        after = torch.stack([torch.arange(n) > (n if c is None else c) for c in cuts])  # (R, L)
        return h + after[..., None].to(h) * noise

    if getattr(model, "embed", None) is None:  # no embeddings (a count-based model): change the tokens
        rows = x.expand(len(cuts), -1).clone()
        for r, c in enumerate(cuts):
            if c is not None:
                rows[r, c + 1:] = (rows[r, c + 1:] + 1) % VOCAB
        with torch.no_grad():
            return model(rows)
    with torch.no_grad(), tap_embeddings(model, perturb):
        return model(x.expand(len(cuts), -1))


def _moved(base: torch.Tensor, moved: torch.Tensor, cut: int, scale: float, rtol: float) -> Leak | None:
    diff = (moved[: cut + 1].double() - base[: cut + 1].double()).abs().amax(-1)  # (cut + 1,)
    bad = (diff > rtol * scale).nonzero()
    return (cut, int(bad[0]), float(diff.max()) / scale) if len(bad) else None


def cut_moves(model: LanguageModel, x: torch.Tensor, cuts: list[int], scale: float) -> list[Leak]:
    """One batch: row 0 unperturbed, row r perturbed after cuts[r-1]: (cut, first moved
    position <= cut, relative size) per cut that moves an earlier output."""
    out = cut_forward(model, x, [None, *cuts])
    found = (_moved(out[0], out[r], c, scale, rtol_of(model)) for r, c in enumerate(cuts, start=1))
    return [m for m in found if m is not None]


def _cut_apart(model: LanguageModel, x: torch.Tensor, cut: int, scale: float, batch: int) -> bool:
    """Does the cut move an earlier output when the unperturbed and the perturbed input each
    run in their own batch of ``batch`` identical rows?"""
    base, moved = cut_forward(model, x, [None] * batch), cut_forward(model, x, [cut] * batch)
    return _moved(base[0], moved[0], cut, scale, rtol_of(model)) is not None


def _raise_leak(model: LanguageModel, kind: str, leak: Leak, tiles: dict[str, int], length: int) -> None:
    t, j, rel = leak
    at = in_dtype(model, length)
    if kind == "cut":
        raise ConformanceError(
            f"causality leak{at}: perturbing inputs after position {t} changed the output at "
            f"{where(j, tiles)} ({rel:.3g} x output scale); cut at {where(t, tiles)}")
    tol = grad_leak_rtol(model)
    if tol == 0:
        why = (f"exact causal forms give exactly 0 there; if this mixer's causal form is inexact by design "
               f"(future terms that cancel numerically, e.g. an FFT convolution), declare "
               f"`exact_causality = False` on it and the suite allows "
               f"{GRAD_LEAK_RTOLS[dtype_of(model)]:g} x the largest past gradient")
    else:
        why = f"more than the {tol:g} allowed for a mixer declaring exact_causality = False"
    raise ConformanceError(f"causality leak{at}: the output at {where(t, tiles)} has a non-zero gradient "
                           f"w.r.t. the input at future {where(j, tiles)} ({rel:.3g} x the largest past "
                           f"one; {why})")


def assert_no_leak(model: LanguageModel, x: torch.Tensor, kind: str, positions: list[int], *, rows: int,
                   scale: float, tiles: dict[str, int], length: int) -> None:
    """Probe ``positions`` (output positions for kind="gradient", cuts for "cut") ``rows`` at a
    time; raise for the first leak, named as a batch effect if it vanishes in a batch of 1."""
    for i in range(0, len(positions), rows):
        chunk = positions[i:i + rows]
        found = gradient_leaks(model, x, chunk) if kind == "gradient" else cut_moves(model, x, chunk, scale)
        if not found:
            continue
        leak = found[0]
        batch = len(chunk) if kind == "gradient" else len(chunk) + 1
        if batch == 1 or (gradient_leaks(model, x, [leak[0]]) if kind == "gradient"
                          else _cut_apart(model, x, leak[0], scale, 1)):
            _raise_leak(model, kind, leak, tiles, length)
        # gone in a batch of 1: is it the batch's size or the other rows? Run the same test in
        # a batch of identical rows asking the same thing (gradients from one output position,
        # so a gradient reaching another row's input lands no later than that position either).
        at = in_dtype(model, length)
        if gradient_leaks(model, x, [leak[0]] * batch) if kind == "gradient" else \
                _cut_apart(model, x, leak[0], scale, batch):
            raise ConformanceError(
                f"output depends on the batch size{at}: the {kind} test of {where(leak[0], tiles)} finds a "
                f"leak in a batch of {batch} identical rows but not in a batch of 1")
        raise ConformanceError(
            f"output depends on other rows of the batch{at}: the {kind} test of {where(leak[0], tiles)} "
            f"fails in a batch of {batch} rows asking different things, but neither alone nor among {batch} "
            f"identical copies of itself")
