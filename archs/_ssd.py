"""The scalar-decay linear recurrence shared by linear attention and Mamba-2 (SSD).

Both families compute, per head, with a state S_t of shape (K, V):

    S_t = exp(g_t) S_{t-1} + k_t v_t^T          o_t = q_t^T S_t

Linear attention / RetNet / GLA: (q, k, v) = (phi(q), phi(k), v), g = the log decay.
Mamba-2's SSD (Dao & Gu 2024): (q, k, v) = (C, B, dt * x), g = dt * A, and its (P, N)
state is this (K, V) = (N, P) state transposed. One implementation serves both (this
module imports neither family, so importing one never pulls in the other).

Layout: q, k (b, L, h, K); v (b, L, h, V); g (b, L, h); state (b, h, K, V); all already in
the compute dtype (``compute_dtype``: archs.precision's policy). Each core returns (o (b, L, h, V), final state).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from archs.precision import acc_dtype as compute_dtype  # noqa: F401 - re-exported to the families
from archs.precision import up as wide  # noqa: F401

Tensor = torch.Tensor


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


# -- the recurrence itself ----------------------------------------------------------------
def step_core(q_t: Tensor, k_t: Tensor, v_t: Tensor, g_t: Tensor, state: Tensor
              ) -> tuple[Tensor, Tensor]:
    """One token: q_t, k_t (b, h, K), v_t (b, h, V), g_t (b, h), state (b, h, K, V)."""
    state = state * torch.exp(g_t)[..., None, None] + torch.einsum("bhk,bhv->bhkv", k_t, v_t)
    return torch.einsum("bhk,bhkv->bhv", q_t, state), state


def recurrent_core(q: Tensor, k: Tensor, v: Tensor, g: Tensor, state: Tensor
                   ) -> tuple[Tensor, Tensor]:
    """The recurrence one step at a time: slow, and the reference for the rest."""
    outs = []
    for t in range(q.shape[1]):
        o_t, state = step_core(q[:, t], k[:, t], v[:, t], g[:, t], state)
        outs.append(o_t)
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(v.shape)
    return o, state


def quadratic_core(q: Tensor, k: Tensor, v: Tensor, g: Tensor, state0: Tensor
                   ) -> tuple[Tensor, Tensor]:
    """The unrolled form: o = (exp(segsum(g)) o q k^T) v, an explicit L x L matrix."""
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


def chunked_core(q: Tensor, k: Tensor, v: Tensor, g: Tensor, state: Tensor,
                 chunk_size: int) -> tuple[Tensor, Tensor]:
    """The SSD algorithm: quadratic within chunks of ``chunk_size``, a scan across them.

    Any length works: the tail is padded with zero keys (which write nothing) and zero
    log decay (which keeps the state), so the final state is exact.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    L = q.shape[1]
    pad = (-L) % chunk_size
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
