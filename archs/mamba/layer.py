"""The Mamba-1 block (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective
State Spaces", Fig. 3) as a sequence mixer:

    x, z = in_proj(x)                      # two branches of width d_inner
    x = silu(causal_depthwise_conv1d(x))   # short local mixing (d_conv taps)
    dt, B, C = split(x_proj(x))            # input-dependent ("selective") SSM parameters
    dt = softplus(dt_proj(dt))             # per-channel step size
    y = selective_scan(x, dt, A, B, C, D)  # h_t = exp(dt A) h_{t-1} + dt B x_t ; y = C h + D x
    out = out_proj(y * silu(z))

Backends: "ref" (sequential loop, the truth), "chunked" (blocked PyTorch scan: one op per
step in cache-sized blocks on a CPU, log-depth doubling over large blocks on a GPU),
"fused" (on a GPU: mamba_ssm's CUDA scan, the fused mamba_inner_fn when causal_conv1d is
installed too - or, with ``fused_impl="triton"``, the project's own Triton scan,
archs/mamba/triton_scan.py, for machines without mamba-ssm's CUDA build; on a CPU: the
project's C kernel, archs/_scan_cpu.c, compiled at first use),
"auto" (fused when the device's kernel is available, else chunked). The backend that runs is what ``resolved_backend`` reports; a
requested backend that cannot run raises. prefill always takes the unfused path: mamba_ssm's
kernel has no initial-state input, so fused.selective_scan_fused adds the carried state's
contribution in PyTorch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from archs._conv import causal_conv1d_channels_last, causal_conv1d_cpu
from archs.backends import (VOCABULARY, BackendUnavailableError, available, check_backend, fused_kernel_for,
                            require, resolve_auto)
from archs.blocks import low_rank_linear, sample_dt_bias
from archs.mamba import fused, fused_cpu
from archs.mamba.chunked import default_block_len, resolve_form, selective_scan_chunked_bld
from archs.mamba.ref import selective_scan_ref, selective_state_update_ref
from archs.mixer import Mixer
from archs.precision import up

BACKENDS = VOCABULARY
FUSED_IMPLS = ("mamba_ssm", "triton", "triton_tiled")
TRITON = "triton"
TRITON_IMPLS = ("triton", "triton_tiled")  # archbench's scans: step by step, or in tiles of steps


def triton_available() -> bool:
    return available(TRITON)


@dataclass
class MambaConfig:
    d_model: int
    d_state: int = 16  # N, state size per channel (paper default)
    d_conv: int = 4  # width of the causal depthwise conv (paper default)
    expand: int = 2  # d_inner = expand * d_model (paper default)
    dt_rank: int | str = "auto"  # low-rank dt projection; "auto" = ceil(d_model / 16) (paper)
    dt_min: float = 0.001  # initial dt ~ log-uniform[dt_min, dt_max] (paper)
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4  # keeps softplus^-1 finite for tiny sampled dt
    dt_scale: float = 1.0  # dt_proj weight ~ U(+-dt_scale / sqrt(dt_rank)) (mamba_ssm)
    conv_bias: bool = True  # mamba_ssm default
    bias: bool = False  # in/out projection bias (mamba_ssm default)
    backend: str = "auto"  # ref | chunked | fused | auto; see module doc
    block_len: int | None = None  # chunked scan's steps per cache block; None = from shapes
    fused_impl: str = "mamba_ssm"  # whose scan "fused" runs on CUDA: mamba_ssm (its CUDA build)
    # | triton (archs/mamba/triton_scan.py: needs only triton) | triton_tiled (the same, TILE steps
    # at a time by a parallel scan: triton_scan_tiled.py); a CPU runs its C kernel either way

    def __post_init__(self) -> None:
        self.backend = check_backend(self.backend, BACKENDS, "Mamba")
        for name in ("d_model", "d_state", "d_conv", "expand"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dt_rank == "auto":
            self.dt_rank = math.ceil(self.d_model / 16)
        if not isinstance(self.dt_rank, int) or self.dt_rank < 1:
            raise ValueError(f"dt_rank must be 'auto' or an int >= 1, got {self.dt_rank!r}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        if self.fused_impl not in FUSED_IMPLS:
            raise ValueError(f"fused_impl={self.fused_impl!r} is not one of {FUSED_IMPLS}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model


class MambaMixer(Mixer):
    """Mamba-1 mixer: (B, L, d_model) -> (B, L, d_model); constant-size decode state."""

    backends = BACKENDS
    state_growth = "constant"
    accepts_initial_state = True  # a fixed-size state; prefill is differentiable
    bidirectional = "two_pass"  # model.causal=false: a forward and a reversed copy, added

    def __init__(self, d_model: int, **kwargs) -> None:
        super().__init__()
        cfg = self.config = MambaConfig(d_model=d_model, **kwargs)
        if cfg.backend == "fused" and not self._cuda_kernel_available():
            fused_cpu.require_cpu_kernel()  # fail at build time, not at the first forward
        self.backend = cfg.backend
        d_inner, n = cfg.d_inner, cfg.d_state
        self.in_proj = nn.Linear(cfg.d_model, 2 * d_inner, bias=cfg.bias)
        self.conv1d = nn.Conv1d(d_inner, d_inner, cfg.d_conv, groups=d_inner,
                                padding=cfg.d_conv - 1, bias=cfg.conv_bias)
        self.x_proj = nn.Linear(d_inner, cfg.dt_rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(cfg.dt_rank, d_inner, bias=True)
        # S4D-real init A = -(1..N) per channel, stored as log so A stays negative
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1.0)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        # The SSM's own parameters are not regularised toward zero (mamba_ssm's convention).
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(d_inner, cfg.d_model, bias=cfg.bias)
        self.reset_dt_parameters()

    @torch.no_grad()
    def reset_dt_parameters(self) -> None:
        """Paper init: softplus(dt_proj.bias) ~ log-uniform[dt_min, dt_max]."""
        cfg = self.config
        std = cfg.dt_scale * cfg.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        self.dt_proj.bias.copy_(sample_dt_bias(cfg.d_inner, cfg.dt_min, cfg.dt_max,
                                               cfg.dt_init_floor))
        self.dt_proj.bias._no_reinit = True  # mamba_ssm convention: LM init must not zero it

    # -- backend bookkeeping ---------------------------------------------------------------
    def _cuda_kernel_available(self) -> bool:
        return triton_available() if self.config.fused_impl in TRITON_IMPLS else fused.mamba_ssm_available()

    def resolved_backend(self, device: torch.device | str | None = None, seq_len: int | None = None) -> str:
        """"ref", "chunked", "fused" (mamba_ssm's scan on CUDA, the C kernel on a CPU) or, on
        CUDA with fused_impl="triton" / "triton_tiled", "fused:triton" / "fused:triton_tiled"
        (the project's Triton scans)."""
        device = self.param_device if device is None else device
        backend = resolve_auto(self.backend, device, self._cuda_kernel_available,
                               fused_cpu.cpu_kernel_available)
        impl = self.config.fused_impl
        if backend == "fused" and impl in TRITON_IMPLS and self._fused_kernel(device) == "fused":
            return f"fused:{impl}"
        return backend

    def tiles(self) -> dict[str, int]:
        c = self.config  # block_len=None: chosen from shapes (here for batch 1) and the device
        form = resolve_form("auto", self.param_device)
        tiles = {"scan_block": c.block_len or default_block_len(1, c.d_inner, c.d_state, form), "conv": c.d_conv}
        if c.fused_impl in TRITON_IMPLS and triton_available():  # (imports triton)
            from archs.mamba.triton_scan import CHUNK
            from archs.mamba.triton_scan_tiled import TILE
            # the Triton backward recomputes from these states
            tiles["triton_checkpoint"] = TILE if c.fused_impl == "triton_tiled" else CHUNK
        return tiles

    def _backend_for(self, x: Tensor) -> str:
        """The backend for input x; "fused" is "fused_cpu" on a CPU, "fused" (mamba_ssm) on
        CUDA, and raises where neither can run."""
        backend = self.resolved_backend(x.device)
        if backend.startswith("fused:triton"):  # fused:triton or fused:triton_tiled
            require("Mamba", TRITON)
            return "fused_triton"  # which of the two: config.fused_impl
        if backend != "fused":
            return backend
        kernel = self._fused_kernel(x.device)
        if kernel == "fused":
            fused.require_mamba_ssm()
        elif kernel == "fused_cpu":
            fused_cpu.require_cpu_kernel()
        else:
            raise BackendUnavailableError(
                f"Mamba: backend 'fused' has kernels for CUDA and the CPU, got '{x.device}'; "
                f"use backend='chunked' (or 'auto')")
        return kernel

    # whose kernels "fused" runs for a device: mamba_ssm's on CUDA, fused_cpu.c's on a CPU
    # (both are the `fused` backend; rows tell them apart by their device)
    _fused_kernel = staticmethod(fused_kernel_for)

    @property
    def A(self) -> Tensor:
        return -torch.exp(up(self.A_log))  # (d_inner, N)

    # -- pieces shared by the three forms -----------------------------------------------
    def _conv(self, x: Tensor, prefix: Tensor | None, backend: str) -> tuple[Tensor, Tensor]:
        """silu(causal depthwise conv) of x (B, L, E) continuing ``prefix`` (B, E, K-1)
        (None = fresh sequence); also returns the K-1 inputs a continuation needs."""
        weight = self.conv1d.weight[:, 0, :]
        if backend == "fused_cpu":
            return causal_conv1d_cpu(x, weight, self.conv1d.bias, prefix, silu=True)
        out, new_prefix = causal_conv1d_channels_last(x, weight, self.conv1d.bias, prefix)
        return F.silu(out), new_prefix

    def _ssm_params(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """delta (pre-bias, pre-softplus) (..., E), B and C (..., N) from the conv output."""
        cfg = self.config
        dt_low, B, C = torch.split(self.x_proj(u), [cfg.dt_rank, cfg.d_state, cfg.d_state],
                                   dim=-1)
        return low_rank_linear(dt_low, self.dt_proj.weight), B, C

    def _scan(self, backend: str, u: Tensor, delta: Tensor, B: Tensor, C: Tensor, z: Tensor,
              h0: Tensor | None, want_last: bool) -> tuple[Tensor, Tensor | None]:
        """Selective scan on channels-last (B, L, .) tensors with the chosen backend."""
        args = dict(D=up(self.D), delta_bias=up(self.dt_proj.bias),
                    delta_softplus=True, initial_state=h0, return_last_state=want_last)
        if backend == "fused_triton":
            from archs.mamba.triton_scan import selective_scan_triton_bld  # imports triton
            args.update(z=z, tiled=self.config.fused_impl == "triton_tiled")
            res = selective_scan_triton_bld(u, delta, self.A, B, C, **args)
        elif backend in ("chunked", "fused_cpu"):
            scan = selective_scan_chunked_bld if backend == "chunked" else fused_cpu.selective_scan_cpu_bld
            res = scan(u, delta, self.A, B, C, z=z, block_len=self.config.block_len, **args)
        else:
            scan = selective_scan_ref if backend == "ref" else fused.selective_scan_fused
            res = scan(u.transpose(1, 2), delta.transpose(1, 2), self.A, B.transpose(1, 2),
                       C.transpose(1, 2), z=z.transpose(1, 2), **args)
            res = (res[0].transpose(1, 2), res[1]) if want_last else res.transpose(1, 2)
        return res if want_last else (res, None)

    # -- the three forms -----------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """(B, L, d_model) -> (B, L, d_model), parallel over the sequence."""
        backend = self._backend_for(x)
        if backend == "fused" and fused.causal_conv1d_available():
            return self._forward_fused(x)
        # without causal_conv1d, "fused" still runs mamba_ssm's scan kernel (as mamba_ssm's
        # own Mamba module does), with the short conv in PyTorch
        y, _ = self._forward_from(backend, x, None)
        return y

    def _forward_from(self, backend: str, x: Tensor, state: dict | None,
                      ) -> tuple[Tensor, dict | None]:
        xz = self.in_proj(x)
        u, z = xz.chunk(2, dim=-1)  # (B, L, E) each
        u, conv_state = self._conv(u, None if state is None else state["conv"], backend)
        delta, B, C = self._ssm_params(u)
        h0 = None if state is None else state["ssm"]
        y, last = self._scan(backend, u, delta, B, C, z, h0, want_last=state is not None)
        new_state = None if state is None else {"conv": conv_state.contiguous(), "ssm": last}
        return self.out_proj(y.to(x.dtype)), new_state

    def _forward_fused(self, x: Tensor) -> Tensor:
        """mamba_ssm's mamba_inner_fn: conv, projections, scan and gate in fused kernels."""
        seqlen = x.shape[1]
        # in_proj straight into the (B, 2E, L) layout the kernels want
        xz = rearrange(self.in_proj.weight @ rearrange(x, "b l d -> d (b l)"),
                       "d (b l) -> b d l", l=seqlen)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(xz.dtype)[:, None]
        return fused.mamba_inner_fused(
            xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
            self.out_proj.weight, self.out_proj.bias, self.A, up(self.D),
            up(self.dt_proj.bias))

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """{"conv": (B, E, d_conv-1) last conv inputs, "ssm": (B, E, N) fp32 SSM state}."""
        device = device if device is not None else self.param_device
        cfg = self.config
        return {
            "conv": torch.zeros(batch_size, cfg.d_inner, cfg.d_conv - 1, device=device,
                                dtype=dtype or self.param_dtype),
            "ssm": torch.zeros(batch_size, cfg.d_inner, cfg.d_state, device=device,
                               dtype=torch.promote_types(self.param_dtype, torch.float32)),
        }

    def prefill(self, x: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """A chunk continuing from ``state`` (not modified); returns y and the new state.

        Runs the parallel scan from the carried SSM state and conv inputs, so a long
        sequence fed in chunks gives the same outputs as one forward pass.
        """
        backend = self._backend_for(x)
        return self._forward_from(backend, x, state)

    def step(self, x_t: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """One token x_t (B, d_model) -> y_t (B, d_model); ``state`` is not modified."""
        backend = self._backend_for(x_t)
        u, z = self.in_proj(x_t).chunk(2, dim=-1)  # (B, E)
        weight = self.conv1d.weight[:, 0, :]  # (E, K)
        conv_state = state["conv"].clone()
        if backend == "fused" and fused.causal_conv1d_available():
            u = fused.causal_conv1d_update_fused(u, conv_state, weight, self.conv1d.bias)
        else:
            # (B, E) -> (B, 1, E): the conv over a one-token sequence
            u, conv_state = self._conv(u[:, None], conv_state, backend)
            u = u[:, 0]
        delta, B, C = self._ssm_params(u)
        ssm = state["ssm"].clone()
        update = {"fused": fused.selective_state_update_fused,
                  "fused_cpu": fused_cpu.selective_state_update_cpu}.get(backend, selective_state_update_ref)
        if backend == "fused_triton" and fused.state_update_available():
            update = fused.selective_state_update_fused  # mamba_ssm's Triton decode kernel (no CUDA build needed)
        y = update(ssm, u, delta, self.A, B, C, up(self.D), z=z,
                   dt_bias=up(self.dt_proj.bias), dt_softplus=True)
        return self.out_proj(y.to(x_t.dtype)), {"conv": conv_state.contiguous(), "ssm": ssm}

    # -- bookkeeping ---------------------------------------------------------------------
    def state_bytes(self, batch_size: int, dtype: torch.dtype | None = None) -> int:
        """Analytic decode-state size: conv inputs in ``dtype`` + fp32 SSM state."""
        cfg = self.config
        itemsize = torch.empty(0, dtype=dtype or self.param_dtype).element_size()
        conv = batch_size * cfg.d_inner * (cfg.d_conv - 1) * itemsize
        return conv + batch_size * cfg.d_inner * cfg.d_state * 4

    def expected_state_bytes(self, batch_size: int, context_len: int, dtype: torch.dtype) -> int:
        return self.state_bytes(batch_size, dtype)

    def sequence_flops(self, batch_size: int, seq_len: int) -> int:
        """Per token and inner channel: the depthwise conv (2·d_conv) and, per state entry,
        the scan's exp(Δ·A)·h + Δ·B·u update and the C·h read (about 7 FLOPs: 3 mul, 2 add,
        the discretisation's 2 mul; exp counted as one)."""
        c = self.config
        per_channel = 2 * c.d_conv + 7 * c.d_state
        return batch_size * seq_len * c.d_inner * per_channel

    def extra_repr(self) -> str:
        c = self.config
        return (f"d_model={c.d_model}, d_inner={c.d_inner}, d_state={c.d_state}, "
                f"d_conv={c.d_conv}, dt_rank={c.dt_rank}, backend={c.backend!r}")
