"""Building blocks of the LM shell: norms, MLPs, a top-k routed MoE, and the residual Block."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from archs._norm import rms_norm_cpu
from archs.mixer import Mixer, State
from archs.precision import up

NORMS = ("rmsnorm", "layernorm")
MLPS = ("swiglu", "gelu", "none")
# Where a residual block normalises: "pre" (GPT-2: x + f(Norm(x)), a final norm before the
# head) or "post" (the original Transformer: Norm(x + f(x)), no final norm).
NORM_POSITIONS = ("pre", "post")


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    """softplus^-1(x) = x + log(1 - exp(-x)), written with expm1 for small x."""
    return x + torch.log(-torch.expm1(-x))


def sample_dt_bias(n: int, dt_min: float, dt_max: float, floor: float) -> torch.Tensor:
    """The Mamba / Mamba-2 step-size bias init: softplus(bias) ~ log-uniform[dt_min, dt_max],
    no step below ``floor`` (so softplus^-1 stays finite)."""
    dt = torch.empty(n).uniform_(math.log(dt_min), math.log(dt_max)).exp()
    return inverse_softplus(dt.clamp(min=floor))


class _LowRankLinear(torch.autograd.Function):
    """x @ W^T for a W with a tiny inner dimension (Mamba's dt projection: rank 4 -> 128
    channels), with both gradients computed as products whose *output* is the small side.
    On a CPU the BLAS computes dW = g^T x ([128, M] x [M, 4]) and dx = g W ([M, 128] x
    [128, 4]) 4-7x slower than the same numbers as (x^T g)^T and (W^T g^T)^T (one thread,
    M = 2048: 468 -> 65 us and 336 -> 79 us), ~5% of a small Mamba's training step."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.linear(x, weight)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, weight = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = (weight.t() @ g2.t()).t().reshape(x.shape)
        if ctx.needs_input_grad[1]:
            gw = (x.reshape(-1, x.shape[-1]).t() @ g2).t().contiguous()
        return gx, gw


def low_rank_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight)`` (no bias) for a weight (out, r) with r much smaller than out;
    on a CPU through ``_LowRankLinear``'s better-shaped gradient products."""
    if x.device.type != "cpu" or not torch.is_grad_enabled():
        return F.linear(x, weight)
    return _LowRankLinear.apply(x, weight)


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm (same parameters, state dict and numbers), run on a CPU by the C kernel of
    archs/_norm.c: PyTorch's backward of it is ~10 elementwise passes, ~0.5 ms a norm at the
    small models' (8 * 256, 64) (archs/_norm.py says when the PyTorch form runs instead)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.normalized_shape) == 1:
            eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
            out = rms_norm_cpu(x, self.weight, x.shape[-1], eps)
            if out is not None:
                return out
        return super().forward(x)


def make_norm(kind: str, dim: int, eps: float = 1e-5) -> nn.Module:
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; choose one of {list(NORMS)}")


def mlp_hidden(kind: str, dim: int, ratio: float) -> int:
    # SwiGLU has three matrices instead of two, so it gets 2/3 of the width to keep the
    # parameter count of a ratio-wide GELU MLP (Shazeer 2020).
    hidden = ratio * dim * (2 / 3 if kind == "swiglu" else 1)
    return max(1, int(round(hidden)))



class GatedRMSNorm(nn.Module):
    """RMSNorm(y * silu(z)) over groups of ``group_size`` channels, in at least float32 (mamba2's
    norm, gate before norm); without z a plain RMSNorm per group (RetNet's per-head norm
    with group_size = head_dim). nn.RMSNorm needs torch 2.4 and has no gate."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.group_size, self.eps = group_size, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        if z is None:  # a CPU runs this as one C kernel (archs/_norm.py: where it does not)
            out = rms_norm_cpu(y, self.weight, self.group_size, self.eps)
            if out is not None:
                return out
        h = up(y) if z is None else up(y) * F.silu(up(z))
        # (..., g*s) -> (..., g, s): normalise each group on its own
        h = rearrange(h, "... (g s) -> ... g s", s=self.group_size)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        h = rearrange(h, "... g s -> ... (g s)")
        return (h * up(self.weight)).to(y.dtype)

class MLP(nn.Module):
    """Position-wise feed-forward: GELU (d -> h -> d) or SwiGLU (silu(W1 x) * W3 x -> W2)."""

    def __init__(self, dim: int, kind: str = "swiglu", ratio: float = 4.0, bias: bool = False):
        super().__init__()
        if kind not in ("swiglu", "gelu"):
            raise ValueError(f"unknown mlp {kind!r}; choose one of {list(MLPS)}")
        self.kind = kind
        hidden = mlp_hidden(kind, dim, ratio)
        self.up = nn.Linear(dim, hidden * (2 if kind == "swiglu" else 1), bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.kind == "swiglu":
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        else:
            h = F.gelu(h)
        return self.down(h)


class MoE(nn.Module):
    """Top-k routed mixture of MLP experts (dropless: every token reaches its k experts).

    The router is a softmax over experts; the k chosen gates are renormalised to sum to 1.
    ``aux_loss()`` is the Switch-Transformer load-balancing loss of the last forward:
    n_experts · Σ_e (fraction of routed slots to e) · (mean router probability of e),
    which is 1 at perfect balance and grows as routing collapses.
    """

    def __init__(self, dim: int, n_experts: int = 16, top_k: int = 2, kind: str = "swiglu",
                 ratio: float = 4.0):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"MoE needs 1 <= top_k <= n_experts, got top_k={top_k}, n_experts={n_experts}")
        self.n_experts, self.top_k = n_experts, top_k
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(dim, kind, ratio) for _ in range(n_experts))
        self._aux: torch.Tensor | None = None
        self.last_topk: torch.Tensor | None = None  # (tokens, k) expert ids, for inspection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])  # (T, D), T = all positions of the batch
        probs = self.router(tokens).float().softmax(dim=-1)  # (T, E)
        gates, chosen = probs.topk(self.top_k, dim=-1)  # (T, k)
        gates = (gates / gates.sum(dim=-1, keepdim=True)).to(x.dtype)
        self.last_topk = chosen
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            token_idx, slot = (chosen == e).nonzero(as_tuple=True)
            if token_idx.numel():
                y = expert(tokens[token_idx]) * gates[token_idx, slot, None]
                out.index_add_(0, token_idx, y)
        routed = F.one_hot(chosen, self.n_experts).float().sum(dim=1)  # (T, E) 0/1 per expert
        frac = routed.mean(dim=0) / self.top_k
        self._aux = self.n_experts * (frac * probs.mean(dim=0)).sum()
        return out.reshape(shape)

    def aux_loss(self) -> torch.Tensor | None:
        return self._aux


class Block(nn.Module):
    """Residual block around a mixer and an optional MLP, normalised before or after:

        pre  (GPT-2, the default):          h = x + mixer(Norm(x));  out = h + mlp(Norm(h))
        post (the original Transformer):    h = Norm(x + mixer(x));  out = Norm(h + mlp(h))

    Post-norm keeps every residual stream normalised, so the gradient reaching the last
    layers is large at initialisation and training without learning-rate warm-up can
    fail at depth (Xiong et al. 2020); pre-norm leaves an un-normalised identity path.
    """

    def __init__(self, dim: int, mixer: Mixer, mlp: nn.Module | None, norm: str = "rmsnorm",
                 norm_position: str = "pre"):
        super().__init__()
        if norm_position not in NORM_POSITIONS:
            raise ValueError(f"unknown norm_position {norm_position!r}; choose one of {list(NORM_POSITIONS)}")
        self.post_norm = norm_position == "post"
        self.mixer_norm = make_norm(norm, dim)
        self.mixer = mixer
        self.mlp_norm = make_norm(norm, dim) if mlp is not None else None
        self.mlp = mlp

    def _sublayer_input(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return x if self.post_norm else norm(x)

    def _residual_output(self, norm: nn.Module, h: torch.Tensor) -> torch.Tensor:
        return norm(h) if self.post_norm else h

    def _mlp(self, h: torch.Tensor) -> torch.Tensor:
        if self.mlp is None:
            return h
        return self._residual_output(self.mlp_norm, h + self.mlp(self._sublayer_input(self.mlp_norm, h)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mixer(self._sublayer_input(self.mixer_norm, x))
        return self._mlp(self._residual_output(self.mixer_norm, x + y))

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        y, state = self.mixer.step(self._sublayer_input(self.mixer_norm, x_t), state)
        return self._mlp(self._residual_output(self.mixer_norm, x_t + y)), state

    def prefill(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        y, state = self.mixer.prefill(self._sublayer_input(self.mixer_norm, x), state)
        return self._mlp(self._residual_output(self.mixer_norm, x + y)), state

    def aux_loss(self) -> torch.Tensor | None:
        losses = [m.aux_loss() for m in (self.mixer, self.mlp) if hasattr(m, "aux_loss")]
        losses = [loss for loss in losses if loss is not None]
        return sum(losses) if losses else None


def heads_split(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, L, H*Dh) -> (B, H, L, Dh)."""
    return rearrange(x, "b l (h d) -> b h l d", h=n_heads)


def heads_merge(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, Dh) -> (B, L, H*Dh)."""
    return rearrange(x, "b h l d -> b l (h d)")
