"""Choose a model width that hits a budget, so architectures compare at matched size.

The budget is a parameter count by default; any quantity that grows with width works
(FLOPs per token, decode-state bytes at a reference length: see ``width_for_target``).
Models are built on the ``meta`` device (no memory, no init cost) and measured. Widths
an architecture rejects (e.g. not divisible by its head count) raise ValueError and are
stepped over, so each family's own constraints decide the granularity.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

MAX_WIDTH = 1 << 15
# How far to walk past a rejected width looking for an accepted one.
_MAX_SKIP = 512


Measure = Callable[[nn.Module], float]


def param_count(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters())


def build_meta(build: Callable[..., nn.Module], kwargs: dict[str, Any]) -> nn.Module:
    try:
        with torch.device("meta"):
            return build(**kwargs)
    except (NotImplementedError, RuntimeError):
        # Some initialisers need real data; fall back to a CPU build (slower, still exact).
        return build(**kwargs)


def _measure_at(build, kwargs, width: int, measure: Measure) -> float | None:
    try:
        return measure(build_meta(build, {**kwargs, "d_model": width}))
    except ValueError:
        return None


def _valid_at_or_above(build, kwargs, width: int, measure: Measure) -> tuple[int, float] | None:
    for w in range(width, min(width + _MAX_SKIP, MAX_WIDTH) + 1):
        n = _measure_at(build, kwargs, w, measure)
        if n is not None:
            return w, n
    return None


def width_for_params(build: Callable[..., nn.Module], kwargs: dict[str, Any], target: int) -> int:
    """The accepted d_model whose parameter count is closest to ``target``."""
    return width_for_target(build, kwargs, target, param_count, what="target_params")


def width_for_target(build: Callable[..., nn.Module], kwargs: dict[str, Any], target: float,
                     measure: Measure, what: str = "target") -> int:
    """The accepted d_model whose ``measure(model)`` is closest to ``target``.

    ``measure`` must grow with width (parameters, FLOPs per token, state bytes).
    """
    if target <= 0:
        raise ValueError(f"{what} must be positive, got {target}")
    find = lambda w: _valid_at_or_above(build, kwargs, w, measure)  # noqa: E731
    lo = find(1)
    if lo is None:
        try:  # say why: the error of a usual width (a bad keyword is not about the width)
            measure(build_meta(build, {**kwargs, "d_model": 64}))
        except ValueError as exc:
            raise ValueError(f"no width up to {_MAX_SKIP} is accepted by this architecture; "
                             f"check its other keyword arguments (at d_model=64: {exc})") from exc
        raise ValueError(f"no width up to {_MAX_SKIP} is accepted by this architecture; "
                         "check its other keyword arguments")
    if lo[1] >= target:
        return lo[0]
    # Exponential search for a width above the target, then bisection on widths.
    hi = lo
    while hi[1] < target:
        nxt = find(min(hi[0] * 2, MAX_WIDTH))
        if nxt is None or nxt[0] == hi[0]:
            raise ValueError(f"{what}={target} needs a width beyond {MAX_WIDTH}")
        lo, hi = hi, nxt
    while True:
        mid = find((lo[0] + hi[0]) // 2 + 1)
        if mid is None or mid[0] >= hi[0]:
            break
        if mid[1] < target:
            lo = mid
        else:
            hi = mid
    return lo[0] if target - lo[1] <= hi[1] - target else hi[0]
