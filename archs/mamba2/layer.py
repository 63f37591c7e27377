"""``Mamba2Mixer``: the Mamba-2 block (Dao & Gu 2024) as a sequence mixer.

u -> in_proj -> (z, xBC, dt); xBC -> depthwise causal conv1d -> SiLU -> (x, B, C);
dt -> softplus(dt + dt_bias); y = SSD(x, dt, A, B, C) + D x; y = RMSNorm(y * silu(z))
(grouped); out_proj. The decode state is the conv window (B, conv_dim, d_conv - 1) and the
SSM state (B, H, P, N) in float32: constant in context length.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from archs import _scan_cpu as scan_cpu
from archs._conv import causal_conv1d_channels_last, causal_conv1d_cpu
from archs._fla import check_chunk, chunk_ok
from archs.backends import VOCABULARY, BackendUnavailableError, check_backend, fused_kernel_for, resolve_auto
from archs.blocks import GatedRMSNorm, sample_dt_bias
from archs.mamba2 import chunked, fused, fused_cpu, ref
from archs.mixer import Mixer, State
from archs.precision import up

BACKENDS = VOCABULARY
# What runs the SSD (Mamba2Mixer._routes): a whole sequence, and one decode step.
# "cpu" is the project's C scan kernel (fused_cpu.py), what backend="fused" runs on a CPU;
# _mix calls it (and "ref") itself: the kernel also applies the gate before the norm.
SCANS = {"chunked": chunked.ssd_chunked, "mamba_ssm": fused.ssd_fused, "fla": fused.ssd_fused_fla}
STEPS = {"ref": ref.ssd_step, "chunked": ref.ssd_step, "mamba_ssm": fused.ssd_step_fused,
         "fla": fused.ssd_step_fused_fla, "cpu": fused_cpu.ssd_step_cpu}


@dataclass
class Mamba2Config:
    d_model: int
    d_state: int = 64  # N: SSD makes a large state cheap (Mamba-1 used 16)
    d_conv: int = 4  # local conv width, as in Mamba-1/2
    expand: int = 2  # d_inner = expand * d_model, as in Mamba
    # P. The paper uses 64; 32 keeps CPU-sized widths fine-grained for parameter matching
    # (expand * d_model must be a multiple of it) - the value every shipped config uses.
    headdim: int = 32
    ngroups: int = 1  # B/C shared by all heads (like multi-value attention); >1 for TP
    chunk_size: int = 64  # chunked SSD: quadratic inside a chunk, so keep it small on CPU
    backend: str = "auto"  # "ref" (recurrent) | "chunked" | "fused" (a C kernel on a CPU) | "auto"
    # backend="fused": whose SSD kernels run - "mamba_ssm" (the paper's own) or "fla"
    # (chunk_simple_gla: the same SSD as scalar-decay linear attention; chunk_size a power
    # of two >= 16). Recorded: resolved_backend() says "fused:<impl>/<conv kernel>".
    fused_impl: str = "mamba_ssm"
    A_init_range: tuple[float, float] = (1.0, 16.0)  # A = -uniform[1, 16], as in mamba2
    dt_min: float = 0.001  # dt initialised log-uniform in [dt_min, dt_max] (paper)
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4  # no initial dt below this
    conv_bias: bool = True  # as in mamba2
    bias: bool = False  # in/out projections without bias, as in mamba2
    norm_eps: float = 1e-5

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.ngroups * self.d_state

    def __post_init__(self) -> None:
        for name in ("d_model", "d_state", "d_conv", "expand", "headdim", "ngroups",
                     "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_inner % self.headdim:
            raise ValueError(f"expand * d_model = {self.expand} * {self.d_model} = "
                             f"{self.d_inner} is not divisible by headdim={self.headdim}; "
                             f"choose headdim dividing {self.d_inner} (or change d_model/expand)")
        if self.nheads % self.ngroups:
            raise ValueError(f"nheads = {self.nheads} (d_inner / headdim) is not divisible by "
                             f"ngroups={self.ngroups}; choose ngroups dividing {self.nheads}")
        self.backend = check_backend(self.backend, BACKENDS, "Mamba-2")
        if self.fused_impl not in fused.FUSED_IMPLS:
            raise ValueError(f"fused_impl={self.fused_impl!r} is not one of {fused.FUSED_IMPLS}")
        if self.backend == "fused" and self.fused_impl == "fla":
            check_chunk(self.chunk_size, "Mamba-2")
        lo, hi = self.A_init_range
        if not 0 < lo <= hi:
            raise ValueError(f"A_init_range must satisfy 0 < low <= high, got {self.A_init_range}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")


class Mamba2Mixer(Mixer):
    backends = BACKENDS
    state_growth = "constant"
    config_class = Mamba2Config
    bidirectional = "two_pass"  # model.causal=false: a forward and a reversed copy, added
    accepts_initial_state = True  # a fixed-size state; prefill is differentiable

    def __init__(self, config: Mamba2Config) -> None:
        super().__init__()
        self.config = c = config
        self.backend = c.backend
        if c.backend == "fused" and not fused.fused_available(c.fused_impl) \
                and not scan_cpu.cpu_kernel_available():
            fused.require_fused(c.fused_impl)  # fail now, with the install hint, not mid-run
        # order of the projection: [z, xBC, dt]
        self.in_proj = nn.Linear(c.d_model, c.d_inner + c.conv_dim + c.nheads, bias=c.bias)
        self.conv1d = nn.Conv1d(c.conv_dim, c.conv_dim, c.d_conv, groups=c.conv_dim,
                                bias=c.conv_bias)
        self.dt_bias = nn.Parameter(sample_dt_bias(c.nheads, c.dt_min, c.dt_max, c.dt_init_floor))
        self.A_log = nn.Parameter(torch.log(torch.empty(c.nheads).uniform_(*c.A_init_range)))
        self.D = nn.Parameter(torch.ones(c.nheads))
        self.norm = GatedRMSNorm(c.d_inner, c.d_inner // c.ngroups, eps=c.norm_eps)
        self.out_proj = nn.Linear(c.d_inner, c.d_model, bias=c.bias)

    # -- small pieces -------------------------------------------------------------------
    def resolved_backend(self, device: torch.device | str | None = None, seq_len: int | None = None) -> str:
        """"ref", "chunked", or on CUDA "fused:<SSD kernels>/<conv kernel>", e.g.
        "fused:mamba_ssm/causal_conv1d" or "fused:fla/torch_conv"; on a CPU "fused" (the
        project's C scan and conv kernels, whatever fused_impl says)."""
        c = self.config
        device = self.param_device if device is None else device
        backend = resolve_auto(self.backend, device,
                               lambda: fused.fused_available(c.fused_impl) and
                               (c.fused_impl != "fla" or chunk_ok(c.chunk_size)),
                               scan_cpu.cpu_kernel_available)
        if backend != "fused":
            return backend
        kernel = self._fused_kernel(device)
        if kernel == "fused_cpu":
            return "fused"
        if kernel != "fused":
            raise BackendUnavailableError(f"Mamba-2: backend 'fused' has kernels for CUDA and "
                                          f"the CPU, got '{device}'; use backend='chunked'")
        return f"fused:{c.fused_impl}/{'causal_conv1d' if fused.fused_conv_available() else 'torch_conv'}"

    # whose kernels "fused" runs for a device: mamba_ssm's or fla's Triton ones on CUDA, the
    # C scan and conv on a CPU (fused_cpu.py); a hook tests replace
    _fused_kernel = staticmethod(fused_kernel_for)

    def tiles(self) -> dict[str, int]:
        return {"chunk": self.config.chunk_size, "conv": self.config.d_conv}

    def _routes(self, device: torch.device) -> tuple[str, str]:
        """(what runs the SSD: "ref" | "chunked" | "mamba_ssm" | "fla" | "cpu", what runs
        the conv: "torch" | "causal_conv1d" | "cpu")."""
        backend = self.resolved_backend(device)
        if backend == "fused":  # on a CPU
            scan_cpu.require_cpu_kernel()
            return "cpu", "cpu"
        if not backend.startswith("fused"):
            return backend, "torch"
        return self.config.fused_impl, "causal_conv1d" if backend.endswith("/causal_conv1d") else "torch"

    def _split(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """u (..., D) -> z (..., d_inner), xBC (..., conv_dim), dt (..., H) float32."""
        c = self.config
        z, xBC, dt = torch.split(self.in_proj(u), [c.d_inner, c.conv_dim, c.nheads], dim=-1)
        return z, xBC, F.softplus(up(dt) + up(self.dt_bias))

    def _ssm_inputs(self, xBC: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Post-conv xBC (..., conv_dim) -> x (..., H, P), B and C (..., G, N)."""
        c = self.config
        gn = c.ngroups * c.d_state
        x, B, C = torch.split(xBC, [c.d_inner, gn, gn], dim=-1)
        return (rearrange(x, "... (h p) -> ... h p", p=c.headdim),
                rearrange(B, "... (g n) -> ... g n", n=c.d_state),
                rearrange(C, "... (g n) -> ... g n", n=c.d_state))

    def _A(self) -> torch.Tensor:
        return -torch.exp(up(self.A_log))  # (H,), negative: a decay

    def _conv(self, xBC: torch.Tensor, conv_state: torch.Tensor | None, kernel: str = "torch"
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal depthwise conv + SiLU over xBC (B, L, C) continuing from conv_state
        (B, C, W-1) (None: zeros) by ``kernel`` ("torch" | "causal_conv1d" | "cpu");
        returns (out (B, L, C), new conv_state)."""
        weight = rearrange(self.conv1d.weight, "c 1 w -> c w")
        if kernel == "cpu":
            return causal_conv1d_cpu(xBC, weight, self.conv1d.bias, conv_state, silu=True)
        if kernel == "causal_conv1d":
            return fused.conv1d_silu_fused(xBC, weight, self.conv1d.bias, conv_state)
        out, new_state = causal_conv1d_channels_last(xBC, weight, self.conv1d.bias, conv_state)
        return F.silu(out), new_state

    def _mix(self, u: torch.Tensor, state: State | None, want_state: bool
             ) -> tuple[torch.Tensor, State | None]:
        c = self.config
        ssd, conv = self._routes(u.device)
        z, xBC, dt = self._split(u)
        xBC, new_conv = self._conv(xBC, None if state is None else state["conv"], conv)
        x, B, C = self._ssm_inputs(xBC)
        kw = dict(D=self.D, initial_state=None if state is None else state["ssm"],
                  return_final_state=want_state)
        gate = z
        if ssd == "ref":
            y, new_ssm = ref.ssd_recurrent(x, dt, self._A(), B, C, **kw)
        elif ssd == "cpu":  # the C kernel applies the gate y * silu(z) itself (its z input)
            y, new_ssm = fused_cpu.ssd_cpu(x, dt, self._A(), B, C, z=z, **kw)
            gate = None
        else:
            y, new_ssm = SCANS[ssd](x, dt, self._A(), B, C, chunk_size=c.chunk_size, **kw)
        y = self.norm(rearrange(y, "b l h p -> b l (h p)"), gate)
        new_state = {"conv": new_conv, "ssm": new_ssm} if want_state else None
        return self.out_proj(y), new_state

    # -- the three forms ----------------------------------------------------------------
    def forward(self, u: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, L, D)
        return self._mix(u, None, want_state=False)[0]

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> State:
        """{"conv": (B, conv_dim, d_conv-1) in dtype (default: the params'), "ssm": (B, H, P,
        N) float32}."""
        c = self.config
        device = device or self.param_device
        return {"conv": torch.zeros(batch_size, c.conv_dim, c.d_conv - 1, device=device,
                                    dtype=dtype or self.param_dtype),
                "ssm": torch.zeros(batch_size, c.nheads, c.headdim, c.d_state, device=device,
                                   dtype=torch.promote_types(self.param_dtype, torch.float32))}

    def step(self, u_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        ssd, conv_kernel = self._routes(u_t.device)
        z, xBC, dt = self._split(u_t)  # u_t (B, D)
        if conv_kernel == "causal_conv1d":
            weight = rearrange(self.conv1d.weight, "c 1 w -> c w")
            xBC, conv = fused.conv1d_silu_step_fused(xBC, weight, self.conv1d.bias, state["conv"])
        else:
            # (B, C) -> (B, 1, C): the conv over a one-token sequence
            xBC, conv = self._conv(xBC[:, None], state["conv"], conv_kernel)
            xBC = xBC[:, 0]
        x, B, C = self._ssm_inputs(xBC)
        y, ssm = STEPS[ssd](x, dt, self._A(), B, C, state["ssm"], self.D)
        y = self.norm(rearrange(y, "b h p -> b (h p)"), z)
        return self.out_proj(y), {"conv": conv, "ssm": ssm}

    def prefill(self, u: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        return self._mix(u, state, want_state=True)

    # -- bookkeeping --------------------------------------------------------------------
    def state_bytes(self, batch_size: int, dtype: torch.dtype | None = None) -> int:
        """Analytic decode-state size: conv window in ``dtype`` (default: the params') plus
        the float32 SSM state; independent of context length."""
        c = self.config
        elem = torch.empty((), dtype=dtype or self.param_dtype).element_size()
        return batch_size * (c.conv_dim * (c.d_conv - 1) * elem
                             + c.nheads * c.headdim * c.d_state * 4)

    def expected_state_bytes(self, batch_size: int, context_len: int, dtype: torch.dtype) -> int:
        return self.state_bytes(batch_size, dtype)

    def sequence_flops(self, batch_size: int, seq_len: int) -> int:
        """The chunked SSD, per head and token (Q = chunk_size): the intra-chunk C·Bᵀ scores
        and their application to x (about Q/2 positions each), the chunk-state write
        (B xᵀ) and the state read (C·h); plus the depthwise conv over xBC."""
        c = self.config
        q, n, p = c.chunk_size, c.d_state, c.headdim
        per_head = (q + 1) * (n + p) + 2 * 2 * n * p
        conv = 2 * c.conv_dim * c.d_conv
        return batch_size * seq_len * (c.nheads * per_head + conv)
