"""Block kernels of the chunked selective scan (see chunked.py for the design).

All tensors are fp32 and time-major with channels innermost:
    dt, dtu, gy : (L, B, D)      At : (N, D)      Bt, Ct : (L, B, N, G)
    states      : (B, N, D)      work buffers : (block, B, N, D)
A channel d belongs to group d // (D / G); G = 1 when B and C are shared by all channels.

Two forms of the recurrences inside a block, the same numbers up to rounding:
* "steps" (CPU): one fused op per time step on a contiguous (B, N, D) slice - the cheapest
  form where an op costs ~2.5 us.
* "doubling" (GPU): Hillis-Steele doubling over the block, log2(block) rounds of whole-block
  ops. On a GPU each op is a kernel launch (~5-10 us) whatever its size, so the step loop
  cost 86 ms fwd+bwd for one layer at 1K tokens on an H200 (0.01 TFLOP/s); doubling does
  log2(block) / block of the launches for log2(block) times the arithmetic. Stable like the
  step form: only decays <= 1 are ever multiplied, nothing is divided.
"""
from __future__ import annotations

import torch
from torch import Tensor


# -- products and contractions on (n, B, N, D) blocks ------------------------------------
def outer(v: Tensor, W: Tensor, out: Tensor) -> Tensor:
    """out[t,b,n,d] = v[t,b,d] * W[t,b,n,group(d)]; v (n,B,D), W (n,B,N,G)."""
    n, bz, d_state, groups = W.shape
    v5 = v.view(n, bz, 1, groups, -1)  # (n, B, 1, G, H)
    out5 = out.view(n, bz, d_state, groups, -1)  # (n, B, N, G, H)
    torch.mul(v5, W.unsqueeze(-1), out=out5)
    return out


def sum_state(h: Tensor, W: Tensor, out: Tensor) -> Tensor:
    """out[t,b,d] = sum_n W[t,b,n,group(d)] * h[t,b,n,d]  -> (n, B, D)."""
    n, bz, d_state, groups = W.shape
    if groups == 1:
        # (nB, 1, N) @ (nB, N, D): one batched GEMV, no temporaries
        torch.bmm(W.view(n * bz, 1, d_state), h.view(n * bz, d_state, -1),
                  out=out.view(n * bz, 1, -1))
    else:
        h5 = h.view(n, bz, d_state, groups, -1)  # (n, B, N, G, H)
        out.view(n, bz, groups, -1).copy_(torch.einsum("tbngh,tbng->tbgh", h5, W))
    return out


def sum_channels(h: Tensor, v: Tensor, out: Tensor) -> Tensor:
    """out[t,b,n,g] = sum_{d in group g} h[t,b,n,d] * v[t,b,d]  -> (n, B, N, G)."""
    n, bz, d_state, groups = out.shape
    if groups == 1:
        # (nB, 1, D) @ (nB, D, N) with h read transposed (BLAS handles the stride)
        torch.bmm(v.view(n * bz, 1, -1), h.view(n * bz, d_state, -1).transpose(1, 2),
                  out=out.view(n * bz, 1, d_state))
    else:
        h5 = h.view(n, bz, d_state, groups, -1)  # (n, B, N, G, H)
        v4 = v.view(n, bz, groups, -1)  # (n, B, G, H)
        out.copy_(torch.einsum("tbngh,tbgh->tbng", h5, v4))
    return out


def discretize(dt: Tensor, dtu: Tensor, At: Tensor, Bt: Tensor, dA: Tensor, X: Tensor) -> None:
    """dA = exp(dt A), X = dt u B for one block, written into reused buffers."""
    torch.mul(dt.unsqueeze(2), At, out=dA)  # (n, B, 1, D) * (N, D)
    dA.exp_()
    outer(dtu, Bt, out=X)


# -- the two recurrences -------------------------------------------------------------------
class Steps:
    """A reused (rows, B, N, D) work buffer and its per-step views, unbound once (unbinding
    per block costs more than a block's arithmetic)."""

    def __init__(self, like: Tensor, rows: int, d_state: int) -> None:
        self.full = like.new_empty(rows, like.shape[1], d_state, like.shape[2])
        self.steps = self.full.unbind(0)


def run_states(a_steps: tuple[Tensor, ...], x_steps: tuple[Tensor, ...], start: Tensor) -> None:
    """In place x[t] <- a[t] * x[t-1] + x[t], with x[-1] = start. One fused op per step on
    a contiguous (B, N, D) slice; at ~2.5 us a step this loop is the scan's floor."""
    prev = start
    for a_t, x_t in zip(a_steps, x_steps):
        prev = x_t.addcmul_(a_t, prev)


def run_adjoint(a_steps: tuple[Tensor, ...], g_steps: tuple[Tensor, ...], carry: Tensor) -> None:
    """In place g[t] <- g[t] + a[t+1] * g[t+1] (the adjoint of run_states), then
    carry <- a[0] * g[0]; on entry carry holds a[n] * g[n] from the block to the right."""
    n = len(g_steps)
    g_steps[n - 1].add_(carry)
    for t in range(n - 2, -1, -1):
        g_steps[t].addcmul_(a_steps[t + 1], g_steps[t + 1])
    torch.mul(a_steps[0], g_steps[0], out=carry)


def doubling_states(a: Tensor, x: Tensor, start: Tensor) -> None:
    """``run_states`` on whole (n, B, N, D) blocks: x[t] <- a[t] * x[t-1] + x[t], x[-1] =
    start, in ceil(log2 n) rounds. After the round of span s, x[t] holds the recurrence
    over steps t-2s+1..t and A[t] the product of their decays; the products are formed
    out of place, so no round reads a value it already overwrote."""
    n = x.shape[0]
    x[0].addcmul_(a[0], start)
    A, span = a.clone(), 1
    while span < n:
        x[span:].add_(A[span:] * x[:-span])
        if 2 * span < n:  # the last round's decays are never read
            A[span:] = A[span:] * A[:-span]
        span *= 2


def doubling_adjoint(a: Tensor, g: Tensor, carry: Tensor) -> None:
    """``run_adjoint`` on whole blocks: g[t] <- g[t] + a[t+1] * g[t+1], g[n-1] taking carry
    in, then carry <- a[0] * g[0]: the same doubling, run backwards in time."""
    n = g.shape[0]
    g[n - 1].add_(carry)
    if n > 1:
        rev = g.flip(0)  # rev[s] = g[n-1-s]; its decay a[n-s] (s >= 1) joins it to rev[s-1]
        shifted = torch.cat([torch.zeros_like(a[:1]), a[1:].flip(0)])
        doubling_states(shifted, rev, torch.zeros_like(carry))
        g.copy_(rev.flip(0))
    torch.mul(a[0], g[0], out=carry)


def states(form: str, dA: "Steps", H: "Steps", n: int) -> None:
    """H[1..n] <- the block's states from H[0], in the chosen form."""
    if form == "doubling":
        doubling_states(dA.full[:n], H.full[1:n + 1], H.full[0])
    else:
        run_states(dA.steps[:n], H.steps[1:n + 1], H.steps[0])


def adjoints(form: str, dA: "Steps", G: "Steps", n: int, carry: Tensor) -> None:
    if form == "doubling":
        doubling_adjoint(dA.full[:n], G.full[:n], carry)
    else:
        run_adjoint(dA.steps[:n], G.steps[:n], carry)


# -- forward and backward over all blocks ------------------------------------------------
def scan_forward(dt: Tensor, dtu: Tensor, At: Tensor, Bt: Tensor, Ct: Tensor, h0: Tensor,
                 block: int, starts: Tensor | None, form: str = "steps") -> tuple[Tensor, Tensor]:
    """y = <C, h> (L, B, D) and the last state; fills ``starts`` (n_blocks, B, N, D) with
    the state entering each block when given (the backward pass restarts from those)."""
    d_state = At.shape[0]
    dA = Steps(dt, block, d_state)
    H = Steps(dt, block + 1, d_state)  # row 0: state entering the block
    H.full[0].copy_(h0)
    y = dt.new_empty(dt.shape)
    blocks = zip(dt.split(block), dtu.split(block), Bt.split(block), Ct.split(block),
                 y.split(block))
    for k, (dt_k, dtu_k, B_k, C_k, y_k) in enumerate(blocks):
        n = dt_k.shape[0]
        if starts is not None:
            starts[k].copy_(H.full[0])
        h = H.full[1:n + 1]
        discretize(dt_k, dtu_k, At, B_k, dA.full[:n], h)
        states(form, dA, H, n)
        sum_state(h, C_k, out=y_k)
        H.full[0].copy_(H.full[n])
    return y, H.full[0].clone()


class Grads:
    """Gradient buffers of one backward pass, time-major like the inputs."""

    def __init__(self, dt: Tensor, Bt: Tensor, block: int) -> None:
        self.dB = torch.empty_like(Bt)
        self.dC = torch.empty_like(Bt)
        self.d_dtu = torch.empty_like(dt)  # dL/d(dt*u) per step
        self.d_dtA = torch.empty_like(dt)  # dL/d(dt) through exp(dt A)
        # dL/dA^T, summed over time within each row; reduced over rows at the end
        self.dAt = dt.new_zeros(block, dt.shape[1], Bt.shape[2], dt.shape[2])


def block_grads(acc: Grads, n: int, g: Tensor, H: Steps, a: Tensor, q: Tensor, gy_k: Tensor,
                dt_k: Tensor, dtu_k: Tensor, At: Tensor, B_k: Tensor,
                outs: tuple[Tensor, ...]) -> None:
    """Grads of one block from its states H[1:n+1] (H[0]: state before) and adjoints g."""
    dB_k, dC_k, d_dtu_k, d_dtA_k = outs
    sum_channels(H.full[1:n + 1], gy_k, out=dC_k)  # from y = <C, h>
    sum_channels(g, dtu_k, out=dB_k)  # from the input term dt u B
    sum_state(g, B_k, out=d_dtu_k)
    # q = g * dA * h_prev = dL/d(dt A): the gradient through the decay
    torch.mul(g, a, out=q).mul_(H.full[:n])
    acc.dAt[:n].addcmul_(q, dt_k.unsqueeze(2))
    torch.sum(q.mul_(At), dim=2, out=d_dtA_k)


def scan_backward(gy: Tensor, g_last: Tensor, dt: Tensor, dtu: Tensor, At: Tensor,
                  Bt: Tensor, Ct: Tensor, starts: Tensor, block: int, form: str = "steps") -> tuple[Tensor, ...]:
    """Adjoint scan from the last block to the first, recomputing each block's states.

    Returns dL/d(dt) through the decay, dL/d(dt*u), dL/dA^T, dL/dB, dL/dC, dL/dh0.
    """
    d_state = At.shape[0]
    dA, G, Q = (Steps(dt, block, d_state) for _ in range(3))
    H = Steps(dt, block + 1, d_state)
    acc = Grads(dt, Bt, block)
    carry = g_last.contiguous().clone()  # a[n] * g[n] from the block to the right
    blocks = list(zip(dt.split(block), dtu.split(block), Bt.split(block), Ct.split(block),
                      gy.split(block), starts.unbind(0), acc.dB.split(block),
                      acc.dC.split(block), acc.d_dtu.split(block), acc.d_dtA.split(block)))
    for dt_k, dtu_k, B_k, C_k, gy_k, start, *outs in reversed(blocks):
        n = dt_k.shape[0]
        a, g = dA.full[:n], G.full[:n]
        H.full[0].copy_(start)
        discretize(dt_k, dtu_k, At, B_k, a, H.full[1:n + 1])
        states(form, dA, H, n)
        outer(gy_k, C_k, out=g)  # direct term C_t gy_t
        adjoints(form, dA, G, n, carry)
        block_grads(acc, n, g, H, a, Q.full[:n], gy_k, dt_k, dtu_k, At, B_k, tuple(outs))
    return acc.d_dtA, acc.d_dtu, acc.dAt.sum(dim=(0, 1)), acc.dB, acc.dC, carry
