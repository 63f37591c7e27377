"""Mamba-2's state-space duality (SSD) in pure PyTorch: the numerical truth.

The SSD layer (Dao & Gu 2024, "Transformers are SSMs") is a selective SSM whose
transition is a *scalar* per head: for each head h with head dim P and state dim N,

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t B_t^T        h_t: (P, N)
    y_t = h_t C_t + D * x_t

with dt_t > 0 (already softplus-ed), A < 0, and B, C shared by the heads of a group.
Unrolled, y = M x with M[t, s] = C_t . B_s * dt_s * exp(sum_{s<r<=t} dt_r A): a causal,
decay-masked attention-like matrix. Three forms compute the same function:

* ``ssd_naive``     - materialise M (L x L); quadratic, for testing;
* ``ssd_recurrent`` - the recurrence above, one step at a time; fp32 state;
* ``ssd_chunked``   - the paper's chunked algorithm (quadratic inside a chunk,
  recurrent across chunks); the training form, linear in L.

All take x (B, L, H, P), dt (B, L, H), A (H,), B and C (B, L, G, N), optional D (H,),
an optional fp32 initial state (B, H, P, N) and return (y, final_state | None).
They compute in at least float32 (float64 stays float64) and return y in x's dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

Tensor = torch.Tensor


# -- small pieces ------------------------------------------------------------------------
def segsum(log_a: Tensor) -> Tensor:
    """Stable segment sums: (..., T) -> (..., T, T) with out[i, j] = sum_{j<m<=i} log_a[m].

    Entries above the diagonal are -inf, so ``exp(segsum(a))`` is the causal decay mask.
    Each entry is a sum over its own segment only; the tempting cumsum[i] - cumsum[j]
    cancels two large numbers and loses the small difference when sequences are long.
    """
    T = log_a.shape[-1]
    strictly_lower = torch.ones(T, T, dtype=torch.bool, device=log_a.device).tril(-1)
    # rows m, columns j: log_a[m] wherever m > j
    terms = repeat(log_a, "... m -> ... m j", j=T).masked_fill(~strictly_lower, 0.0)
    out = terms.cumsum(dim=-2)  # row i sums m = j+1 .. i
    lower = strictly_lower | torch.eye(T, dtype=torch.bool, device=log_a.device)
    return out.masked_fill(~lower, float("-inf"))


def _wide(t: Tensor) -> Tensor:
    """At least float32 (bf16/fp16 are upcast; float64 stays, so gradcheck works)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype states and sums are kept in: float32, or float64 for float64 inputs."""
    return torch.promote_types(x.dtype, torch.float32)


def _check_shapes(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    b, l, h, _ = x.shape
    if dt.shape != (b, l, h):
        raise ValueError(f"dt must be (batch, len, heads) = {(b, l, h)}, got {tuple(dt.shape)}")
    if A.shape != (h,):
        raise ValueError(f"A must be (heads,) = ({h},), got {tuple(A.shape)}")
    if B.shape != C.shape or B.shape[:2] != (b, l) or B.dim() != 4:
        raise ValueError(f"B and C must both be (batch, len, groups, d_state) with batch, len "
                         f"= {(b, l)}; got {tuple(B.shape)} and {tuple(C.shape)}")
    if h % B.shape[2] != 0:
        raise ValueError(f"heads ({h}) must be a multiple of groups ({B.shape[2]})")


def _heads(BC: Tensor, n_heads: int) -> Tensor:
    """(b, l, g, n) -> (b, l, h, n): each group's B/C shared by its n_heads/g heads."""
    return repeat(BC, "b l g n -> b l (g r) n", r=n_heads // BC.shape[2])


def _initial(initial_state: Tensor | None, x: Tensor, n: int) -> Tensor:
    b, _, h, p = x.shape
    if initial_state is None:
        return x.new_zeros(b, h, p, n, dtype=compute_dtype(x))
    if initial_state.shape != (b, h, p, n):
        raise ValueError(f"initial_state must be (batch, heads, headdim, d_state) = "
                         f"{(b, h, p, n)}, got {tuple(initial_state.shape)}")
    return initial_state.to(compute_dtype(x))


def _skip(y: Tensor, x: Tensor, D: Tensor | None) -> Tensor:
    return y if D is None else y + x * _wide(D)[:, None]


# -- one step: the recurrence itself -------------------------------------------------------
def ssd_step(x_t: Tensor, dt_t: Tensor, A: Tensor, B_t: Tensor, C_t: Tensor, state: Tensor,
             D: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One token. x_t (b, h, p), dt_t (b, h), B_t / C_t (b, g, n), state (b, h, p, n) fp32.

    Returns y_t (b, h, p) in x_t's dtype and the new fp32 state.
    """
    h = x_t.shape[1]
    x, dt = _wide(x_t), _wide(dt_t)
    Bh = repeat(_wide(B_t), "b g n -> b (g r) n", r=h // B_t.shape[1])
    Ch = repeat(_wide(C_t), "b g n -> b (g r) n", r=h // C_t.shape[1])
    decay = torch.exp(dt * _wide(A))  # (b, h)
    state = state * decay[..., None, None] + torch.einsum("bh,bhp,bhn->bhpn", dt, x, Bh)
    y = torch.einsum("bhpn,bhn->bhp", state, Ch)
    return _skip(y, x, D).to(x_t.dtype), state


# -- the three forms ----------------------------------------------------------------------
def ssd_recurrent(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                  D: Tensor | None = None, initial_state: Tensor | None = None,
                  return_final_state: bool = False) -> tuple[Tensor, Tensor | None]:
    """Sequential scan over time with an fp32 state: slow, and the reference for the rest."""
    _check_shapes(x, dt, A, B, C)
    state = _initial(initial_state, x, B.shape[-1])
    ys = []
    for t in range(x.shape[1]):
        y_t, state = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], state, D)
        ys.append(y_t)
    y = torch.stack(ys, dim=1) if ys else torch.empty_like(x)
    return y, (state if return_final_state else None)


def ssd_naive(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
              D: Tensor | None = None, initial_state: Tensor | None = None,
              return_final_state: bool = False) -> tuple[Tensor, Tensor | None]:
    """Quadratic form: y = (L o C B^T) (dt x) with L = exp(segsum(dt A)), all L x L."""
    _check_shapes(x, dt, A, B, C)
    h, n = x.shape[2], B.shape[-1]
    state0 = _initial(initial_state, x, n)
    xf, dtf = _wide(x), _wide(dt)
    Bh, Ch = _heads(_wide(B), h), _heads(_wide(C), h)
    log_a = rearrange(dtf * _wide(A), "b l h -> b h l")
    decay = torch.exp(segsum(log_a))  # (b, h, t, s)
    scores = torch.einsum("bthn,bshn->bhts", Ch, Bh) * decay
    y = torch.einsum("bhts,bsh,bshp->bthp", scores, dtf, xf)
    # The initial state reaches step t decayed by everything up to and including t.
    from_start = torch.exp(log_a.cumsum(-1))  # (b, h, t)
    y = y + torch.einsum("bthn,bhpn,bht->bthp", Ch, state0, from_start)
    final = None
    if return_final_state:
        to_end = decay[:, :, -1, :]  # (b, h, s): decay from step s to the last step
        final = torch.einsum("bhs,bsh,bshp,bshn->bhpn", to_end, dtf, xf, Bh)
        final = final + state0 * from_start[:, :, -1, None, None]
    return _skip(y, xf, D).to(x.dtype), final


def ssd_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                D: Tensor | None = None, initial_state: Tensor | None = None,
                return_final_state: bool = False, chunk_size: int = 64
                ) -> tuple[Tensor, Tensor | None]:
    """The SSD algorithm: quadratic within chunks of ``chunk_size``, a scan across them.

    Any length works: the tail is padded with dt = 0, which neither decays the state
    (exp(0) = 1) nor writes to it (dt * x = 0), so the final state is exact.
    """
    _check_shapes(x, dt, A, B, C)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    b, L, h, p = x.shape
    state = _initial(initial_state, x, B.shape[-1])
    pad = (-L) % chunk_size
    xf, dtf = F.pad(_wide(x), (0, 0, 0, 0, 0, pad)), F.pad(_wide(dt), (0, 0, 0, pad))
    Bh = F.pad(_heads(_wide(B), h), (0, 0, 0, 0, 0, pad))
    Ch = F.pad(_heads(_wide(C), h), (0, 0, 0, 0, 0, pad))
    # (b, n*c, ...) -> (b, n, c, ...): n chunks of c steps
    xdt = rearrange(xf * dtf[..., None], "b (n c) h p -> b n c h p", c=chunk_size)
    Bc, Cc = (rearrange(t, "b (n c) h s -> b n c h s", c=chunk_size) for t in (Bh, Ch))
    log_a = rearrange(dtf * _wide(A), "b (n c) h -> b h n c", c=chunk_size)
    log_a_cum = log_a.cumsum(-1)  # chunk-local: bounded by one chunk's decay

    # 1. Diagonal blocks: each chunk attends to itself through the decay mask.
    decay_in = torch.exp(segsum(log_a))  # (b, h, n, t, s)
    y_diag = torch.einsum("bnthd,bnshd,bhnts,bnshp->bnthp", Cc, Bc, decay_in, xdt)

    # 2. Chunk states: what each chunk alone writes into the state by its end.
    to_end = torch.exp(log_a_cum[..., -1:] - log_a_cum)  # (b, h, n, s)
    chunk_states = torch.einsum("bnshd,bhns,bnshp->bnhpd", Bc, to_end, xdt)

    # 3. Inter-chunk recurrence: carry the state across chunk boundaries.
    chunk_decay = torch.exp(log_a_cum[..., -1])  # (b, h, n)
    # unbind, not indexing in the loop: the backward of each index op would allocate a
    # zero gradient the size of all chunk states, making the backward quadratic in L
    entering = []
    for decay_i, written_i in zip(chunk_decay.unbind(-1), chunk_states.unbind(1)):
        entering.append(state)
        state = state * decay_i[..., None, None] + written_i
    states_in = torch.stack(entering, dim=1)  # (b, n, h, p, d)

    # 4. State -> output: each step reads the entering state, decayed up to itself.
    from_start = torch.exp(log_a_cum)  # (b, h, n, t)
    y_off = torch.einsum("bnthd,bnhpd,bhnt->bnthp", Cc, states_in, from_start)

    y = rearrange(y_diag + y_off, "b n c h p -> b (n c) h p")[:, :L]
    return _skip(y, _wide(x), D).to(x.dtype), (state if return_final_state else None)
