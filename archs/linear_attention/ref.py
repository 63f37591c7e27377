"""Causal linear attention in pure PyTorch: the numerical truth.

Katharopoulos et al. 2020 replace softmax(q k^T) v by phi(q)^T S_t / (phi(q)^T z_t) with
S_t = sum_{s<=t} phi(k_s) v_s^T and z_t = sum_{s<=t} phi(k_s). This module receives q and
k *after* the feature map. An optional per-head log-decay g <= 0 turns it into
retention / gated linear attention (RetNet, GLA):

    S_t = exp(g_t) S_{t-1} + k_t v_t^T,    o_t = q_t^T S_t  [/ (q_t^T z_t + eps)]

``log_decay`` is None (no decay), (H,) (a fixed decay per head, RetNet) or (B, L, H)
(data dependent, a gated variant). With ``normalize=False`` the denominator is dropped
(RetNet normalises the output with a norm layer instead).

The normaliser is linear attention with value 1, so it rides along as one extra value
column: with ``normalize=True`` the state is (B, H, K, V + 1) and its last column is z;
otherwise it is (B, H, K, V). One state tensor, one code path for both cases.

Three forms compute the same function, with the same signature:
* ``linear_attn_naive``     - the explicit causal (decay-)masked L x L matrix; for tests;
* ``linear_attn_recurrent`` - one step at a time with a float32 state; the reference;
* ``linear_attn_chunked``   - quadratic inside chunks, state passed across them; the
  training form, linear in L, any length.
They compute in at least float32 and return the output in v's dtype.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange

# Decayed linear attention is the scalar-decay recurrence of SSD (x = v, B = k, C = q):
# the same stable segment sums build its decay mask.
from archs.mamba2.ref import compute_dtype, segsum

Tensor = torch.Tensor
Core = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


# -- small pieces ------------------------------------------------------------------------
def state_shape(batch: int, heads: int, d_key: int, d_value: int, normalize: bool
                ) -> tuple[int, int, int, int]:
    """Shape of the recurrent state; the extra value column holds the normaliser z."""
    return (batch, heads, d_key, d_value + int(normalize))


def retnet_log_decay(n_heads: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """RetNet's fixed per-head decays, log(1 - 2^(-5-h)): a spread of memory lengths
    from ~32 tokens (head 0) upwards, doubling per head."""
    h = torch.arange(n_heads, dtype=torch.float64)
    return torch.log1p(-torch.pow(2.0, -5.0 - h)).to(dtype)


def _log_decay(log_decay: Tensor | None, q: Tensor) -> Tensor:
    """None | (H,) | (B, L, H) -> (B, L, H) in the compute dtype (zeros: no decay)."""
    b, l, h, _ = q.shape
    dtype = compute_dtype(q)
    if log_decay is None:
        return q.new_zeros(b, l, h, dtype=dtype)
    if log_decay.shape == (h,):
        return log_decay.to(dtype).expand(b, l, h)
    if log_decay.shape == (b, l, h):
        return log_decay.to(dtype)
    raise ValueError(f"log_decay must be None, (heads,) = ({h},) or (batch, len, heads) = "
                     f"{(b, l, h)}; got {tuple(log_decay.shape)}")


def _check(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dim() != 4 or q.shape != k.shape or v.shape[:3] != q.shape[:3] or v.dim() != 4:
        raise ValueError(f"expected q, k (batch, len, heads, d_key) and v (batch, len, heads, "
                         f"d_value) with matching leading dims; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")


def _run(core: Core, q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None,
         initial_state: Tensor | None, return_final_state: bool, normalize: bool,
         eps: float) -> tuple[Tensor, Tensor | None]:
    """Shared wrapper: widen, append the ones column, run ``core``, divide by z."""
    _check(q, k, v)
    b, _, h, dk = q.shape
    dtype = compute_dtype(q)
    g = _log_decay(log_decay, q)
    qf, kf, vf = q.to(dtype), k.to(dtype), v.to(dtype)
    if normalize:
        vf = torch.cat([vf, vf.new_ones(*vf.shape[:-1], 1)], dim=-1)  # (b, l, h, dv+1)
    shape = state_shape(b, h, dk, v.shape[-1], normalize)
    if initial_state is None:
        state0 = q.new_zeros(shape, dtype=dtype)
    elif tuple(initial_state.shape) != shape:
        raise ValueError(f"initial_state must be {shape} (batch, heads, d_key, d_value"
                         f"{' + 1 for the normaliser' if normalize else ''}); "
                         f"got {tuple(initial_state.shape)}")
    else:
        state0 = initial_state.to(dtype)
    if q.shape[1] == 0:  # nothing to mix: the state passes through unchanged
        return v.new_zeros(v.shape), (state0 if return_final_state else None)
    o, final = core(qf, kf, vf, g, state0)
    if normalize:
        o = o[..., :-1] / (o[..., -1:] + eps)
    return o.to(v.dtype), (final if return_final_state else None)


# -- one step: the recurrence itself -------------------------------------------------------
def _step_core(q_t: Tensor, k_t: Tensor, v_t: Tensor, g_t: Tensor, state: Tensor
               ) -> tuple[Tensor, Tensor]:
    """q_t, k_t (b, h, dk), v_t (b, h, dv), g_t (b, h), state (b, h, dk, dv)."""
    state = state * torch.exp(g_t)[..., None, None] + torch.einsum("bhk,bhv->bhkv", k_t, v_t)
    return torch.einsum("bhk,bhkv->bhv", q_t, state), state


def linear_attn_step(q_t: Tensor, k_t: Tensor, v_t: Tensor, log_decay_t: Tensor | None,
                     state: Tensor, normalize: bool = True, eps: float = 1e-6
                     ) -> tuple[Tensor, Tensor]:
    """One token: q_t, k_t (B, H, K), v_t (B, H, V), log_decay_t None | (H,) | (B, H)."""
    g = None if log_decay_t is None else (
        log_decay_t if log_decay_t.dim() == 1 else log_decay_t[:, None])
    o, new_state = _run(_recurrent_core, q_t[:, None], k_t[:, None], v_t[:, None], g,
                        state, True, normalize, eps)
    return o[:, 0], new_state


# -- the three forms ----------------------------------------------------------------------
def _recurrent_core(q, k, v, g, state):
    outs = []
    for t in range(q.shape[1]):
        o_t, state = _step_core(q[:, t], k[:, t], v[:, t], g[:, t], state)
        outs.append(o_t)
    return torch.stack(outs, dim=1), state


def _naive_core(q, k, v, g, state0):
    log_a = rearrange(g, "b l h -> b h l")
    decay = torch.exp(segsum(log_a))  # (b, h, t, s); zero above the diagonal
    scores = torch.einsum("bthk,bshk->bhts", q, k) * decay
    o = torch.einsum("bhts,bshv->bthv", scores, v)
    # The initial state reaches step t decayed by everything up to and including t.
    from_start = torch.exp(log_a.cumsum(-1))  # (b, h, t)
    o = o + torch.einsum("bthk,bhkv,bht->bthv", q, state0, from_start)
    to_end = decay[:, :, -1, :]  # (b, h, s): decay from step s to the last step
    final = torch.einsum("bhs,bshk,bshv->bhkv", to_end, k, v)
    final = final + state0 * from_start[:, :, -1, None, None]
    return o, final


def _chunked_core(q, k, v, g, state, chunk_size: int):
    L = q.shape[1]
    pad = (-L) % chunk_size
    # Padding: zero keys write nothing, zero log-decay keeps the state: final state exact.
    q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
    # (b, n*c, h, d) -> (b, n, c, h, d): n chunks of c steps
    qc, kc, vc = (rearrange(t, "b (n c) h d -> b n c h d", c=chunk_size) for t in (q, k, v))
    log_a = rearrange(F.pad(g, (0, 0, 0, pad)), "b (n c) h -> b h n c", c=chunk_size)
    log_a_cum = log_a.cumsum(-1)  # chunk-local: bounded by one chunk's decay

    # 1. Diagonal blocks: causal (decay-)masked attention inside each chunk.
    decay_in = torch.exp(segsum(log_a))  # (b, h, n, t, s)
    scores = torch.einsum("bnthk,bnshk->bhnts", qc, kc) * decay_in
    o_diag = torch.einsum("bhnts,bnshv->bnthv", scores, vc)

    # 2. Chunk states: what each chunk alone writes into the state by its end.
    to_end = torch.exp(log_a_cum[..., -1:] - log_a_cum)  # (b, h, n, s)
    chunk_states = torch.einsum("bhns,bnshk,bnshv->bnhkv", to_end, kc, vc)

    # 3. Inter-chunk recurrence: carry the state across chunk boundaries.
    chunk_decay = torch.exp(log_a_cum[..., -1])  # (b, h, n)
    # unbind, not indexing in the loop: the backward of each index op would allocate a
    # zero gradient the size of all chunk states, making the backward quadratic in L
    entering = []
    for decay_i, written_i in zip(chunk_decay.unbind(-1), chunk_states.unbind(1)):
        entering.append(state)
        state = state * decay_i[..., None, None] + written_i
    states_in = torch.stack(entering, dim=1)  # (b, n, h, k, v)

    # 4. State -> output: each step reads the entering state, decayed up to itself.
    from_start = torch.exp(log_a_cum)  # (b, h, n, t)
    o_off = torch.einsum("bnthk,bnhkv,bhnt->bnthv", qc, states_in, from_start)
    return rearrange(o_diag + o_off, "b n c h v -> b (n c) h v")[:, :L], state


def linear_attn_naive(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None = None,
                      initial_state: Tensor | None = None, return_final_state: bool = False,
                      normalize: bool = True, eps: float = 1e-6
                      ) -> tuple[Tensor, Tensor | None]:
    """Quadratic form: O(L^2) time and memory. Returns (o (B, L, H, V), final state | None)."""
    return _run(_naive_core, q, k, v, log_decay, initial_state, return_final_state,
                normalize, eps)


def linear_attn_recurrent(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None = None,
                          initial_state: Tensor | None = None,
                          return_final_state: bool = False, normalize: bool = True,
                          eps: float = 1e-6) -> tuple[Tensor, Tensor | None]:
    """Step-by-step recurrence with a float32 state: slow, and the reference."""
    return _run(_recurrent_core, q, k, v, log_decay, initial_state, return_final_state,
                normalize, eps)


def linear_attn_chunked(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None = None,
                        initial_state: Tensor | None = None, return_final_state: bool = False,
                        normalize: bool = True, eps: float = 1e-6, chunk_size: int = 64
                        ) -> tuple[Tensor, Tensor | None]:
    """Chunked training form: O(L * chunk) time, any L (the tail chunk is padded)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    def core(q_, k_, v_, g_, s_):
        return _chunked_core(q_, k_, v_, g_, s_, chunk_size)

    return _run(core, q, k, v, log_decay, initial_state, return_final_state, normalize, eps)
