"""The compute-dtype policy shared by every mixer: at least float32, float64 kept.

bf16/fp16 inputs are computed in float32 (scans, decays, rotary angles, ALiBi biases,
norms), and float64 inputs stay float64 end to end, so ``torch.autograd.gradcheck`` on a
float64 model checks the real arithmetic instead of a float32 copy of it.
"""
from __future__ import annotations

import torch


def acc_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any given tensor is float64, else float32."""
    dtype = torch.float32
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def up(t: torch.Tensor) -> torch.Tensor:
    """``t`` in at least float32 (a no-op for float32 and float64)."""
    return t.to(acc_dtype(t))
