"""Mamba-1 (selective state space) mixer family; importable without mamba_ssm."""
import math

import torch

from archs.mamba.fused import FastKernelsUnavailable, causal_conv1d_available, mamba_ssm_available
from archs.mamba.layer import MambaConfig, MambaMixer
from archs.mamba.ref import selective_scan_ref, selective_state_update_ref
from archs.mamba.chunked import selective_scan_chunked, selective_scan_chunked_bld
from archs._registry import TAB20, register_arch
from archs.model import LanguageModel, LMConfig, build_lm


_C = MambaConfig  # the one place the defaults live (with the why of each)


def mamba(vocab_size: int = 256, d_model: int = 128, n_layers: int = 2, *, d_state: int = _C.d_state,
          d_conv: int = _C.d_conv, expand: int = _C.expand, dt_rank: int | str = _C.dt_rank,
          backend: str = _C.backend, block_len: int | None = _C.block_len, fused_impl: str = _C.fused_impl,
          mlp: str = "none",
          dt_min: float = _C.dt_min, dt_max: float = _C.dt_max, rescale_out_proj: bool = False,
          **shell) -> LanguageModel:
    """Mamba LM (Gu & Dao 2023): each block is the Mamba mixer alone, no MLP (as in the paper).

    ``dt_min``/``dt_max``: the Δ initialisation range (log-uniform; the paper's 0.001-0.1).
    ``rescale_out_proj``: divide each mixer's out_proj weight by sqrt(residuals per layer x
    n_layers), as mamba_ssm's ``_init_weights(rescale_prenorm_residual=True)`` does (one
    residual per layer without an MLP, two with one); off by default so earlier results
    stay reproducible. ``fused_impl``: whose scan ``backend="fused"`` runs on CUDA, "mamba_ssm"
    (its CUDA build) or "triton" (archbench's Triton kernels, archs/mamba/triton_scan.py)."""
    cfg = LMConfig(vocab_size, d_model, n_layers, mlp=mlp, **shell)
    kw = dict(d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank, backend=backend,
              block_len=block_len, dt_min=dt_min, dt_max=dt_max, fused_impl=fused_impl)
    model = build_lm(cfg, lambda i: MambaMixer(d_model, **kw))
    if rescale_out_proj:
        residuals_per_layer = 1 if mlp == "none" else 2
        with torch.no_grad():
            for mixer in model.mixers:
                mixer.out_proj.weight.div_(math.sqrt(residuals_per_layer * n_layers))
    return model


register_arch("mamba", family="mamba", description="Mamba-1 selective SSM (Gu & Dao 2023): "
              "fast chunked PyTorch scan, mamba_ssm's fused CUDA kernels, archbench's Triton scan "
              "(fused_impl=triton) or its C kernel on a CPU",
              mixer=MambaMixer, letter="M", color=TAB20[6],
              tiny=dict(d_model=32, n_layers=2, d_state=8, block_len=8))(mamba)

__all__ = [
    "MambaConfig", "MambaMixer",
    "selective_scan_ref", "selective_state_update_ref",
    "selective_scan_chunked", "selective_scan_chunked_bld",
    "mamba_ssm_available", "causal_conv1d_available", "FastKernelsUnavailable",
]
