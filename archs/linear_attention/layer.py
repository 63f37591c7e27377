"""``LinearAttentionMixer``: multi-head causal linear attention as a sequence mixer.

x -> q, k, v projections -> feature map phi on q, k -> linear attention (optionally
decayed: a fixed RetNet decay per head, or a data-dependent gate) -> [per-head RMSNorm
when the normaliser is dropped] -> output projection. The decode state is the (B, H, K,
V [+1]) matrix S (and normaliser z), so memory is constant in context length.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from archs._fla import check_chunk, chunk_ok
from archs.backends import VOCABULARY, check_backend, resolve_auto
from archs.blocks import GatedRMSNorm
from archs.linear_attention import chunked, fused, ref
from archs.mixer import Mixer, State
from archs.precision import acc_dtype, up

BACKENDS = VOCABULARY
OWNER = "linear attention"
FEATURE_MAPS = ("elu", "identity")
DECAYS = ("none", "fixed", "gated")


@dataclass
class LinearAttentionConfig:
    d_model: int
    n_heads: int = 4  # a few heads, each a separate d_head x d_head associative memory
    head_dim: int | None = None  # None: d_model // n_heads, the usual split
    feature_map: str = "elu"  # "elu": elu(x)+1 (Katharopoulos, positive); "identity": RetNet
    decay: str = "none"  # "none" | "fixed" (RetNet gammas 1 - 2^(-5-h)) | "gated" (per token)
    normalize: bool = True  # divide by phi(q).z; False: RetNet-style per-head RMSNorm instead
    eps: float = 1e-6  # keeps the denominator away from zero at the first tokens
    # chunked form: quadratic inside, so 64 keeps it cheap and matmul-sized; fused (fla):
    # a power of two >= 16 (archs._fla)
    chunk_size: int = 64
    gate_logit_normalizer: float = 16.0  # GLA's tau: gated decays start near 1 (long memory)
    backend: str = "auto"  # "ref" (L x L) | "chunked" | "fused" (fla) | "auto" (fused on CUDA if present)

    def __post_init__(self) -> None:
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(f"d_model={self.d_model} is not divisible by n_heads="
                                 f"{self.n_heads}; pick n_heads dividing d_model or set head_dim")
            self.head_dim = self.d_model // self.n_heads
        self.backend = check_backend(self.backend, BACKENDS, "linear attention")
        for name, value, allowed in (("feature_map", self.feature_map, FEATURE_MAPS),
                                     ("decay", self.decay, DECAYS)):
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not one of {allowed}")
        if min(self.d_model, self.n_heads, self.head_dim, self.chunk_size) < 1:
            raise ValueError("d_model, n_heads, head_dim and chunk_size must all be >= 1")
        if self.gate_logit_normalizer <= 0:
            raise ValueError(f"gate_logit_normalizer must be > 0, got {self.gate_logit_normalizer}")
        if self.normalize and self.feature_map == "identity":
            raise ValueError("normalize=True needs a positive feature map (the denominator "
                             "phi(q).z can be zero or negative with 'identity'); use "
                             "feature_map='elu' or normalize=False")


class LinearAttentionMixer(Mixer):
    backends = BACKENDS
    state_growth = "constant"
    config_class = LinearAttentionConfig
    bidirectional = "two_pass"  # model.causal=false: a forward and a reversed copy, added
    accepts_initial_state = True  # a fixed-size state; prefill is differentiable

    def __init__(self, config: LinearAttentionConfig) -> None:
        super().__init__()
        self.config = c = config
        self.backend = c.backend
        if c.backend == "fused":
            fused._fla_ops()  # fail now, with the install hint, rather than mid-run
            check_chunk(c.chunk_size, OWNER)
        inner = c.n_heads * c.head_dim
        self.q_proj = nn.Linear(c.d_model, inner, bias=False)
        self.k_proj = nn.Linear(c.d_model, inner, bias=False)
        self.v_proj = nn.Linear(c.d_model, inner, bias=False)
        self.o_proj = nn.Linear(inner, c.d_model, bias=False)
        # "gated": a per-head, per-token log decay logsigmoid(W x) / tau, as in GLA
        self.gate_proj = nn.Linear(c.d_model, c.n_heads, bias=True) if c.decay == "gated" else None
        # RetNet normalises the output per head instead of dividing by phi(q).z
        self.out_norm = None if c.normalize else GatedRMSNorm(c.head_dim, c.head_dim)

    # -- small pieces -------------------------------------------------------------------
    def resolved_backend(self, device: torch.device | str | None = None, seq_len: int | None = None) -> str:
        # "auto" takes fla's kernels only where they can tile by this chunk size
        return resolve_auto(self.backend, self.param_device if device is None else device,
                            lambda: fused.fla_available() and chunk_ok(self.config.chunk_size))

    def tiles(self) -> dict[str, int]:
        return {"chunk": self.config.chunk_size}

    def _phi(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(x) + 1.0 if self.config.feature_map == "elu" else x

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (..., D) -> q, k, v (..., H, head_dim) after the feature map, and log decay."""
        c = self.config
        q, k, v = (rearrange(p(x), "... (h d) -> ... h d", h=c.n_heads)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = self._phi(q), self._phi(k)
        if not c.normalize:  # no denominator to cancel it: keep q.k at unit scale
            q = q * c.head_dim ** -0.5
        if c.decay == "gated":
            log_decay = F.logsigmoid(up(self.gate_proj(x))) / c.gate_logit_normalizer
        elif c.decay == "fixed":
            # rebuilt in float32 each call: a buffer would be rounded by model.to(bf16)
            log_decay = ref.retnet_log_decay(c.n_heads, acc_dtype(x)).to(x.device)
        else:
            log_decay = None
        return q, k, v, log_decay

    def _out(self, o: torch.Tensor) -> torch.Tensor:
        """o (..., H, head_dim) -> (..., D)."""
        if self.out_norm is not None:
            o = self.out_norm(o)
        return self.o_proj(rearrange(o, "... h d -> ... (h d)"))

    def _mix(self, x: torch.Tensor, state: torch.Tensor | None, want_state: bool
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        q, k, v, log_decay = self._qkv(x)
        c, backend = self.config, self.resolved_backend(x.device)
        kw = dict(initial_state=state, return_final_state=want_state,
                  normalize=c.normalize, eps=c.eps)
        if backend == "fused":
            o, new_state = fused.linear_attn_fused(q, k, v, log_decay, chunk_size=c.chunk_size, **kw)
        elif backend == "ref":
            o, new_state = ref.linear_attn_quadratic(q, k, v, log_decay, **kw)
        else:
            o, new_state = chunked.linear_attn_chunked(q, k, v, log_decay, chunk_size=c.chunk_size,
                                                       **kw)
        return self._out(o), new_state

    # -- the three forms ----------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, L, D)
        return self._mix(x, None, want_state=False)[0]

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> State:
        """{"kv": (B, H, K, V [+1]) float32}; dtype is ignored: the state is always fp32."""
        c = self.config
        shape = ref.state_shape(batch_size, c.n_heads, c.head_dim, c.head_dim, c.normalize)
        return {"kv": torch.zeros(shape, device=device or self.param_device,
                                  dtype=torch.promote_types(self.param_dtype, torch.float32))}

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        q, k, v, log_decay = self._qkv(x_t)  # (B, H, d)
        step = (fused.linear_attn_fused_step if self.resolved_backend(x_t.device) == "fused"
                else ref.linear_attn_step)
        o, kv = step(q, k, v, log_decay, state["kv"], self.config.normalize, self.config.eps)
        return self._out(o), {"kv": kv}

    def prefill(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        y, kv = self._mix(x, state["kv"], want_state=True)
        return y, {"kv": kv}

    # -- bookkeeping --------------------------------------------------------------------
    def state_bytes(self, batch_size: int, dtype: torch.dtype | None = None) -> int:
        """Analytic decode-state size; independent of context length (and of ``dtype``,
        since the state is kept in float32)."""
        c = self.config
        return batch_size * c.n_heads * c.head_dim * (c.head_dim + int(c.normalize)) * 4

    def expected_state_bytes(self, batch_size: int, context_len: int, dtype: torch.dtype) -> int:
        return self.state_bytes(batch_size, dtype)

    def sequence_flops(self, batch_size: int, seq_len: int) -> int:
        """The chunked algorithm, per head and token: the causal intra-chunk products
        (q·kᵀ and its application to v, about chunk/2 keys each) plus the state read
        (q·S) and write (kᵀv), with the normaliser as one more value column."""
        c = self.config
        dk, dv = c.head_dim, c.head_dim + int(c.normalize)
        intra = (c.chunk_size + 1) * (dk + dv)  # 2 FLOPs x (C+1)/2 keys x (dk + dv)
        state = 2 * 2 * dk * dv
        return batch_size * seq_len * c.n_heads * (intra + state)
