"""The conformance suite: behavioural checks every architecture must pass.

The project's own tests run it over ``list_archs()``; plugin authors run it on theirs:

    python -m harness.conformance my_arch            # or: archbench-conformance my_arch
    python -m harness.conformance 'transformer*' --kwargs '{"n_heads": 2}'

or from pytest:  ``assert_conformance("my_arch")``.

Each check builds the architecture's tiny variant (``arch_info(name).tiny``) in float32
and compares forms of the same function: shapes, causality, parallel == step decoding,
parallel == chunked prefill, gradients, declared decode-state size, learning, and the
declared length limit.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from archs import SequenceTooLongError, arch_info, create_arch, list_archs
from archs.model import LanguageModel

VOCAB = 64
BATCH = 2
# Not a multiple of the small chunk sizes tiny variants use (4, 8, 16), so chunked
# forms are exercised with a ragged last chunk; SPLIT is unaligned for the same reason.
LENGTH = 21
SPLIT = 13
ATOL, RTOL = 1e-4, 1e-3


@dataclass
class CheckResult:
    arch: str
    check: str
    passed: bool
    detail: str = ""


class ConformanceError(AssertionError):
    pass


def build_tiny(name: str, **overrides) -> LanguageModel:
    kwargs = {"vocab_size": VOCAB, **arch_info(name).tiny, **overrides}
    torch.manual_seed(0)
    return create_arch(name, **kwargs).float().eval()


def _tokens(seed: int = 0, length: int = LENGTH) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (BATCH, length), generator=g)


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if not torch.allclose(a, b, atol=ATOL, rtol=RTOL):
        err = (a - b).abs().max().item()
        raise ConformanceError(f"{what}: max abs difference {err:.3g} > atol {ATOL}")


# --- the checks ------------------------------------------------------------------------------

def check_shapes(model: LanguageModel) -> str:
    logits = model(_tokens())
    if logits.shape != (BATCH, LENGTH, VOCAB):
        raise ConformanceError(f"logits shape {tuple(logits.shape)} != {(BATCH, LENGTH, VOCAB)}")
    if not logits.is_floating_point() or not torch.isfinite(logits).all():
        raise ConformanceError("logits must be finite floating point")
    return f"logits {tuple(logits.shape)} {logits.dtype}"


def check_causality(model: LanguageModel) -> str:
    x = _tokens()
    for t in (0, LENGTH // 2, LENGTH - 2):
        changed = x.clone()
        changed[:, t + 1:] = _tokens(seed=1)[:, t + 1:]
        with torch.no_grad():
            a, b = model(x), model(changed)
        _close(a[:, : t + 1], b[:, : t + 1], f"logits at positions <= {t} changed when tokens > {t} did")
    return "future tokens never change past logits"


def check_step_matches_forward(model: LanguageModel) -> str:
    x = _tokens()
    with torch.no_grad():
        parallel = model(x)
        state = model.init_state(BATCH)
        steps = []
        for t in range(LENGTH):
            logits_t, state = model.step(x[:, t], state)
            steps.append(logits_t)
    _close(torch.stack(steps, dim=1), parallel, "token-by-token step vs parallel forward")
    return f"{LENGTH} steps == parallel"


def check_prefill_matches_forward(model: LanguageModel) -> str:
    x = _tokens()
    with torch.no_grad():
        parallel = model(x)
        state = model.init_state(BATCH)
        first, state = model.prefill(x[:, :SPLIT], state)
        second, state = model.prefill(x[:, SPLIT:], state)
    _close(torch.cat([first, second], dim=1), parallel, f"prefill in chunks [:{SPLIT}], [{SPLIT}:] vs parallel")
    return "two-chunk prefill == parallel"


def check_gradients(model: LanguageModel) -> str:
    model.train()
    logits = model(_tokens())
    loss = F.cross_entropy(logits.flatten(0, 1), _tokens(seed=2).flatten())
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


def check_state_size(model: LanguageModel) -> str:
    sizes = {}
    with torch.no_grad():
        for n in (SPLIT, 2 * SPLIT):
            state = model.init_state(BATCH)
            _, state = model.prefill(_tokens(length=n), state)
            actual = model.state_size_bytes(state)
            declared = model.expected_state_bytes(BATCH, n)
            if declared is not None and declared != actual:
                raise ConformanceError(f"declared state size {declared} B != actual {actual} B after {n} tokens")
            per_layer = [m.state_size_bytes(s) for m, s in zip(model.mixers, state.layers)]
            sizes[n] = per_layer
    for i, mixer in enumerate(model.mixers):
        a, b = sizes[SPLIT][i], sizes[2 * SPLIT][i]
        growth = mixer.state_growth
        if growth == "constant" and a != b:
            raise ConformanceError(f"layer {i} declares a constant state but it grew {a} -> {b} B")
        if growth == "linear" and b != 2 * a:
            raise ConformanceError(f"layer {i} declares a linear state but {a} -> {b} B is not x2")
        if growth == "window" and b < a:
            raise ConformanceError(f"layer {i} window state shrank {a} -> {b} B")
    return f"state bytes {sum(sizes[SPLIT])} -> {sum(sizes[2 * SPLIT])} ({', '.join(sorted({m.state_growth for m in model.mixers}))})"


def check_learns(model: LanguageModel) -> str:
    """Memorise a small repetitive batch: the loss must fall within a few steps."""
    model.train()
    g = torch.Generator().manual_seed(3)
    pattern = torch.randint(0, VOCAB, (BATCH, 7), generator=g)
    x = pattern.repeat(1, 4)[:, : LENGTH + 1]  # (B, LENGTH+1): a period-7 sequence
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


def check_length_limit(model: LanguageModel) -> str:
    limit = model.max_seq_len
    if limit is None:
        return "unbounded"
    try:
        with torch.no_grad():
            model(torch.zeros(1, limit + 1, dtype=torch.long))
    except SequenceTooLongError:
        return f"length {limit + 1} > max_seq_len={limit} raises SequenceTooLongError"
    raise ConformanceError(f"max_seq_len={limit} but a {limit + 1}-token input did not raise")


CHECKS: dict[str, Callable[[LanguageModel], str]] = {
    "shapes": check_shapes,
    "causality": check_causality,
    "step_matches_forward": check_step_matches_forward,
    "prefill_matches_forward": check_prefill_matches_forward,
    "gradients": check_gradients,
    "state_size": check_state_size,
    "learns": check_learns,
    "length_limit": check_length_limit,
}


def run_check(name: str, check: str, **overrides) -> CheckResult:
    try:
        detail = CHECKS[check](build_tiny(name, **overrides))
        return CheckResult(name, check, True, detail)
    except ConformanceError as exc:
        return CheckResult(name, check, False, str(exc))
    except Exception as exc:  # noqa: BLE001 - a crash is a failed check, reported by name
        return CheckResult(name, check, False, f"raised {type(exc).__name__}: {exc}")


def assert_conformance(name: str, checks: list[str] | None = None, **overrides) -> None:
    """For a plugin's own pytest suite: raises AssertionError listing every failed check."""
    failed = [r for r in (run_check(name, c, **overrides) for c in (checks or CHECKS)) if not r.passed]
    if failed:
        raise ConformanceError("; ".join(f"{r.check}: {r.detail}" for r in failed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archs", nargs="*", help="names or globs (default: every registered one)")
    parser.add_argument("--kwargs", default="{}", help="JSON keyword overrides for the tiny variant")
    parser.add_argument("--check", action="append", choices=list(CHECKS), help="run only these checks")
    args = parser.parse_args(argv)
    names = sorted({n for pattern in (args.archs or ["*"]) for n in list_archs(pattern)}) if args.archs \
        else list_archs()
    if args.archs and not names:
        arch_info(args.archs[0])  # raises with the list of known names
    overrides = json.loads(args.kwargs)
    failures = 0
    for name in names:
        for check in args.check or CHECKS:
            result = run_check(name, check, **overrides)
            failures += not result.passed
            print(f"{'PASS' if result.passed else 'FAIL'}  {name:28s} {check:24s} {result.detail}")
    print(f"{len(names)} architecture(s), {failures} failed check(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
