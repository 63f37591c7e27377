"""fla's simple-GLA Triton kernels, shared by linear attention and Mamba-2's second fused route.

Both families run the scalar-decay recurrence of ``archs._ssd`` (S_t = exp(g_t) S_{t-1} +
k_t v_t^T, o_t = q_t^T S_t, one decay per head and token), which is what fla's
``simple_gla`` kernels compute. fla is an optional GPU package: imported lazily through
``archs.backends``, never at module import; a missing package raises
``BackendUnavailableError`` with the one install hint.

Facts relied on (fla-core 0.6.0, inputs ``[B, T, H, ...]``):
* ``chunk_simple_gla(q, k, v, g, scale, initial_state, output_final_state, chunk_size=)``:
  g (B, T, H) is the log decay, the state (B, H, K, V); ``chunk_size`` must be a power of
  two. Its kernels multiply (chunk x chunk) score tiles by (chunk x V) value tiles, and
  Triton's ``tl.dot`` on NVIDIA GPUs needs an inner dimension of at least 16 for 16-bit
  inputs, so a chunk below 16 would not compile there (Triton's interpreter checks it only
  when told to: tests/triton_interpret/shims.py).
* ``fused_recurrent_simple_gla`` takes the same arguments (one decode step: T = 1).
We always pass ``g`` (zeros when there is no decay) and ``scale=1.0`` (callers scale q).
"""
from __future__ import annotations

import torch

from archs.backends import BackendUnavailableError, available, require

Tensor = torch.Tensor
FLA = "fla.ops.simple_gla"
MIN_CHUNK = 16  # tl.dot's smallest inner dimension for bf16/fp16 on NVIDIA GPUs


def fla_ops(owner: str):
    """fla's (chunk_simple_gla, fused_recurrent_simple_gla), or the install hint."""
    (ops,) = require(owner, FLA)
    return ops.chunk_simple_gla, ops.fused_recurrent_simple_gla


def fla_available() -> bool:
    """True if fla's kernels import (does not check for a GPU)."""
    return available(FLA)


def chunk_ok(chunk_size: int) -> bool:
    """Whether fla's chunked kernels can tile by ``chunk_size`` on a GPU."""
    return chunk_size >= MIN_CHUNK and chunk_size & (chunk_size - 1) == 0


def check_chunk(chunk_size: int, owner: str) -> None:
    """BackendUnavailableError unless fla can tile by ``chunk_size``: the fused backend
    cannot run this configuration (so the conformance suite lists it as not runnable, as it
    does a missing package)."""
    if not chunk_ok(chunk_size):
        raise BackendUnavailableError(
            f"{owner}: backend 'fused' runs fla's chunked kernels, which need chunk_size a power "
            f"of two >= {MIN_CHUNK}; got {chunk_size}. Use e.g. chunk_size=64 (fla's default), "
            f"or backend='chunked' (or 'auto', which takes chunked for such a chunk)")


def simple_gla(q: Tensor, k: Tensor, v: Tensor, g: Tensor, state0: Tensor | None,
               want_final: bool, chunk_size: int, owner: str) -> tuple[Tensor, Tensor | None]:
    """The chunked kernel: q, k (B, T, H, K), v (B, T, H, V), g (B, T, H) float32,
    state0 (B, H, K, V) or None. Returns o (B, T, H, V) in v's dtype and the fp32 final
    state (None unless ``want_final``)."""
    chunk_simple_gla, _ = fla_ops(owner)
    check_chunk(chunk_size, owner)
    o, final = chunk_simple_gla(q=q, k=k, v=v, g=g.float().contiguous(), scale=1.0,
                                initial_state=None if state0 is None else state0.float().contiguous(),
                                output_final_state=want_final, chunk_size=chunk_size)
    return o, (final.float() if want_final else None)


def simple_gla_step(q_t: Tensor, k_t: Tensor, v_t: Tensor, g_t: Tensor, state: Tensor,
                    owner: str) -> tuple[Tensor, Tensor]:
    """One token: q_t, k_t (B, H, K), v_t (B, H, V), g_t (B, H), state (B, H, K, V).
    Returns o_t (B, H, V) and the new fp32 state (the state passed in is not changed)."""
    _, fused_recurrent_simple_gla = fla_ops(owner)
    # (B, H, D) -> (B, 1, H, D): a sequence of one token
    o, new_state = fused_recurrent_simple_gla(
        q=q_t[:, None], k=k_t[:, None], v=v_t[:, None], g=g_t.float()[:, None].contiguous(),
        scale=1.0, initial_state=state.float().contiguous(), output_final_state=True)
    return o[:, 0], new_state.float()
