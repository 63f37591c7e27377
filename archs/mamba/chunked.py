"""Fast pure-PyTorch selective scan: same signature and results as ``ref.selective_scan_ref``.

Design (measured on a 2-core CPU, D=512, N=16; see benchmarks/mamba_scan.py):

* The cost of a pure-PyTorch scan is memory traffic, not arithmetic. Every (L, D, N)
  tensor that reaches DRAM costs ~25 ms at L=4K, and a layer's whole fwd+bwd budget is a
  handful of those. So no (L, D, N) tensor is ever materialised: the sequence is cut into
  blocks of ``block_len`` steps whose (block, B, N, D) work tensors stay in L2 cache, and
  buffers are allocated once and reused (fresh large allocations page-fault).
* Inside a block the recurrence h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t runs as one
  fused ``addcmul_`` per step on a contiguous (B, N, D) slice - exact, and stable for any
  dt (only decays <= 1 are ever multiplied; no cumulative products are divided, which is
  what overflows in log-space / "divide by the running decay" chunked forms).
* A hand-written backward (``_ChunkedScan``) runs the adjoint recurrence
  g_t = C_t gy_t + exp(dt_{t+1} A) g_{t+1} block by block from the end, recomputing each
  block's states from a saved block-start state instead of storing all states (that
  would be one (L, D, N) write plus read: slower than recomputing in cache).
* Layout is time-major with channels innermost, (L, B, N, D): per-step slices are
  contiguous, contractions over N are (1 x N) @ (N x D) matmuls, sums over N vectorise
  along D. For batch 1 the layer's (B, L, D) activations already are time-major.
* softplus(delta + bias), the D skip and the SiLU(z) gate are fused into the same
  autograd Function (no autograd graph of (L, D) temporaries); softplus' derivative is
  taken from its output, sigmoid(x) = 1 - exp(-softplus(x)), so delta is not saved.

Gradients flow to every input, including ``initial_state``, and to the returned last
state (mamba_ssm ignores the latter; here it is exact).

On a GPU the per-step loop is launch-bound (86 ms fwd+bwd for one layer at 1K tokens on an
H200, 0.01 TFLOP/s): there ("auto") each block's two recurrences run as log-depth doubling
over much larger blocks instead (``chunked_blocks.doubling_states``); everything else -
the blocks, the saved block starts, the hand-written backward - is shared.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from archs.mamba import chunked_blocks as blk
from archs.mamba.ref import check_scan_inputs_bld
from archs.precision import acc_dtype, up

# Aim for ~256K floats (1 MiB) per block work tensor: a few of them fit in L2.
_BLOCK_ELEMS = 1 << 18
_MIN_BLOCK, _MAX_BLOCK = 8, 64


# the doubling form (GPU): blocks of up to 2^24 state entries (64 MiB per work buffer, a
# handful of buffers), 16..4096 steps - few, large launches
_GPU_BLOCK_ELEMS, _GPU_MIN_BLOCK, _GPU_MAX_BLOCK = 1 << 24, 16, 4096
FORMS = ("auto", "steps", "doubling")


def default_block_len(batch: int, dim: int, d_state: int, form: str = "steps") -> int:
    """Steps: the largest power of two keeping a (block, B, N, D) tensor near 1 MiB (in
    cache), in [8, 64]. Doubling: near 64 MiB, in [16, 4096]."""
    elems, low, high = ((_GPU_BLOCK_ELEMS, _GPU_MIN_BLOCK, _GPU_MAX_BLOCK) if form == "doubling"
                        else (_BLOCK_ELEMS, _MIN_BLOCK, _MAX_BLOCK))
    per_step = max(1, batch * dim * d_state)
    block = 1 << max(0, int(math.log2(max(1, elems // per_step))))
    return max(low, min(high, block))


def resolve_form(form: str, device: torch.device) -> str:
    """"auto": doubling on a GPU (launch-bound there), steps elsewhere (chunked_blocks)."""
    if form not in FORMS:
        raise ValueError(f"the chunked scan's form must be one of {list(FORMS)}, got {form!r}")
    if form == "auto":
        return "doubling" if torch.device(device).type == "cuda" else "steps"
    return form


class _ChunkedScan(torch.autograd.Function):
    """The whole scan on time-major fp32 tensors: u, delta, z (L, B, D); At (N, D);
    Bt, Ct (L, B, N, G); D, delta_bias (D,) or None; h0 (B, N, D).
    Returns out (L, B, D) and the last state (B, N, D)."""

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, At: Tensor, Bt: Tensor, Ct: Tensor,
                D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None, h0: Tensor,
                softplus: bool, block: int, form: str = "steps") -> tuple[Tensor, Tensor]:
        dt = delta if delta_bias is None else delta + delta_bias
        dt = F.softplus(dt) if softplus else dt
        save = any(ctx.needs_input_grad)
        starts = dt.new_empty(-(-dt.shape[0] // block), *h0.shape) if save else None
        y, last = blk.scan_forward(dt, dt * u, At, Bt, Ct, h0, block, starts, form)
        if D is not None:
            y.addcmul_(u, D)
        out = y if z is None else y * F.silu(z)
        if save:
            ctx.save_for_backward(u, dt, At, Bt, Ct, D, z, y if z is not None else None, starts)
        ctx.softplus, ctx.block, ctx.form = softplus, block, form
        ctx.has_bias = delta_bias is not None
        return out, last

    @staticmethod
    def backward(ctx, g_out: Tensor, g_last: Tensor):
        u, dt, At, Bt, Ct, D, z, y, starts = ctx.saved_tensors
        gy, dz = g_out.contiguous(), None
        if z is not None:
            dz = torch.ops.aten.silu_backward(gy * y, z)
            gy = gy * F.silu(z)
        d_dt, d_dtu, dAt, dB, dC, dh0 = blk.scan_backward(
            gy, g_last, dt, dt * u, At, Bt, Ct, starts, ctx.block, ctx.form)
        d_dt.addcmul_(d_dtu, u)  # dt reaches the scan through exp(dt A) and dt * u
        du = d_dtu.mul_(dt)
        dD = None
        if D is not None:
            du.addcmul_(gy, D)
            dD = (gy * u).sum(dim=(0, 1))
        if ctx.softplus:
            # softplus'(x) = sigmoid(x) = 1 - exp(-softplus(x)) = -expm1(-dt)
            d_dt.mul_(torch.expm1(dt.neg())).neg_()
        d_bias = d_dt.sum(dim=(0, 1)) if ctx.has_bias else None
        return du, d_dt, dAt, dB, dC, dD, dz, d_bias, dh0, None, None, None


def _time_major(x: Tensor) -> Tensor:
    """(B, L, ...) -> contiguous fp32 (L, B, ...); free when B == 1."""
    return up(x).transpose(0, 1).contiguous()


def _time_major_bc(BC: Tensor) -> Tensor:
    """(B, L, N) or grouped (B, L, G, N) -> time-major fp32 (L, B, N, G)."""
    if BC.dim() == 3:
        return _time_major(BC).unsqueeze(-1)
    return rearrange(up(BC), "b l g n -> l b n g").contiguous()


def _opt_float(t: Tensor | None) -> Tensor | None:
    return None if t is None else up(t)


def selective_scan_chunked_bld(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                               D: Tensor | None = None, z: Tensor | None = None,
                               delta_bias: Tensor | None = None, delta_softplus: bool = False,
                               initial_state: Tensor | None = None,
                               return_last_state: bool = False, block_len: int | None = None,
                               form: str = "auto") -> Tensor | tuple[Tensor, Tensor]:
    """``selective_scan_chunked`` in the channels-last layout a layer produces (no transposes):
    u, delta, z (B, L, D); B, C (B, L, N) or grouped (B, L, G, N); out (B, L, D).
    ``form``: how each block's recurrences run (chunked_blocks: "steps", "doubling"; "auto"
    = doubling on a GPU)."""
    check_scan_inputs_bld(u, delta, A, B, C, D, z, delta_bias, initial_state)
    batch, seqlen, dim = u.shape
    d_state = A.shape[1]
    form = resolve_form(form, u.device)
    # no longer than the sequence (rounded up to a power of two): every work buffer is
    # (block, B, N, D), so a 4096-step GPU block on 256 tokens would be 16x the memory
    block = block_len or min(default_block_len(batch, dim, d_state, form), 1 << (seqlen - 1).bit_length())
    if block < 1:
        raise ValueError(f"block_len must be >= 1, got {block_len}")
    if initial_state is None:
        h0 = u.new_zeros(batch, d_state, dim, dtype=acc_dtype(u))
    else:
        h0 = rearrange(up(initial_state), "b d n -> b n d").contiguous()
    out, last = _ChunkedScan.apply(
        _time_major(u), _time_major(delta), up(A).t().contiguous(),  # At: (N, D)
        _time_major_bc(B), _time_major_bc(C), _opt_float(D),
        None if z is None else _time_major(z), _opt_float(delta_bias), h0,
        delta_softplus, block, form)
    out = out.transpose(0, 1).to(u.dtype)  # (B, L, D)
    return (out, rearrange(last, "b n d -> b d n").contiguous()) if return_last_state else out


def selective_scan_chunked(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                           D: Tensor | None = None, z: Tensor | None = None,
                           delta_bias: Tensor | None = None, delta_softplus: bool = False,
                           initial_state: Tensor | None = None, return_last_state: bool = False,
                           block_len: int | None = None, form: str = "auto") -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan with ``selective_scan_ref``'s signature and results (see module doc).

    ``block_len`` (steps per cache block) only changes speed; None picks it from the
    shapes. Inputs may be bf16/fp16: everything is computed in fp32, out (B, D, L) has u's
    dtype and the last state (B, D, N) is fp32. Gradients reach every tensor input,
    including ``initial_state``, and flow back from the returned last state.
    """
    res = selective_scan_chunked_bld(
        u.transpose(1, 2), delta.transpose(1, 2), A, B.movedim(-1, 1), C.movedim(-1, 1), D,
        None if z is None else z.transpose(1, 2), delta_bias, delta_softplus, initial_state,
        return_last_state, block_len, form)
    if return_last_state:
        return res[0].transpose(1, 2).contiguous(), res[1]
    return res.transpose(1, 2).contiguous()
