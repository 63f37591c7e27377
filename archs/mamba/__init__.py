"""Mamba-1 (selective state space) mixer family; importable without mamba_ssm."""
from archs.mamba.fused import FastKernelsUnavailable, causal_conv1d_available, mamba_ssm_available
from archs.mamba.layer import MambaConfig, MambaMixer
from archs.mamba.ref import selective_scan_ref, selective_state_update_ref
from archs.mamba.chunked import selective_scan_chunked, selective_scan_chunked_bld
from archs._registry import TAB20, register_arch
from archs.model import LanguageModel, LMConfig, build_lm


def mamba(vocab_size: int = 256, d_model: int = 128, n_layers: int = 2, *, d_state: int = 16,
          d_conv: int = 4, expand: int = 2, dt_rank: int | str = "auto", backend: str = "auto",
          block_len: int | None = None, mlp: str = "none", **shell) -> LanguageModel:
    """Mamba LM (Gu & Dao 2023): each block is the Mamba mixer alone, no MLP (as in the paper)."""
    cfg = LMConfig(vocab_size, d_model, n_layers, mlp=mlp, **shell)
    kw = dict(d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank, backend=backend,
              block_len=block_len)
    return build_lm(cfg, lambda i: MambaMixer(d_model, **kw))


register_arch("mamba", family="mamba", description="Mamba-1 selective SSM (Gu & Dao 2023): "
              "fast chunked PyTorch scan, or mamba_ssm's fused CUDA kernels",
              mixer=MambaMixer, letter="M", color=TAB20[6],
              tiny=dict(d_model=32, n_layers=2, d_state=8, block_len=8))(mamba)

__all__ = [
    "MambaConfig", "MambaMixer",
    "selective_scan_ref", "selective_state_update_ref",
    "selective_scan_chunked", "selective_scan_chunked_bld",
    "mamba_ssm_available", "causal_conv1d_available", "FastKernelsUnavailable",
]
