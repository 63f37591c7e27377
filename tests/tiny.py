"""The small things tests build, written once: a seeded generator and an architecture's
tiny registered variant (``register_arch(..., tiny={...})``: seconds on a CPU)."""
from __future__ import annotations

import torch

from archs import arch_info, create_arch


def gen(seed: int = 0) -> torch.Generator:
    """A CPU generator of its own, so a test's data does not depend on the global RNG."""
    return torch.Generator().manual_seed(seed)


def tiny_model(name: str, vocab_size: int, *, seed: int = 0, **overrides) -> torch.nn.Module:
    """``name``'s tiny variant (its ``tiny`` keywords, then ``overrides``), weights from ``seed``."""
    torch.manual_seed(seed)
    return create_arch(name, vocab_size=vocab_size, **{**arch_info(name).tiny, **overrides})
