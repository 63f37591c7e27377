"""Mamba-2 / SSD (Dao & Gu 2024, "Transformers are SSMs").

Importable on a CPU-only machine: mamba_ssm / causal_conv1d in ``fused`` load lazily.
"""
from archs.mamba2.layer import GatedRMSNorm, Mamba2Config, Mamba2Mixer
from archs.mamba2.ref import segsum, ssd_quadratic, ssd_recurrent, ssd_step
from archs.mamba2.chunked import ssd_chunked
from archs.mamba2.fused import fused_available, ssd_fused, ssd_step_fused
from archs._registry import TAB20, register_arch
from archs.model import LanguageModel, LMConfig, build_lm


_C = Mamba2Config  # the one place the defaults live (with the why of each)


def mamba2(vocab_size: int = 256, d_model: int = 128, n_layers: int = 2, *, d_state: int = _C.d_state,
           d_conv: int = _C.d_conv, expand: int = _C.expand, headdim: int = _C.headdim,
           ngroups: int = _C.ngroups, chunk_size: int = _C.chunk_size, backend: str = _C.backend,
           fused_impl: str = _C.fused_impl, mlp: str = "none", dt_min: float = _C.dt_min,
           dt_max: float = _C.dt_max, **shell) -> LanguageModel:
    """Mamba-2 LM: like Mamba, blocks are the mixer alone (no MLP) unless ``mlp`` says otherwise.
    ``dt_min``/``dt_max``: the Δ initialisation range (log-uniform; the paper's 0.001-0.1).
    ``fused_impl``: whose kernels ``backend="fused"`` runs, "mamba_ssm" or "fla"."""
    cfg = LMConfig(vocab_size, d_model, n_layers, mlp=mlp, **shell)
    mixer = Mamba2Config(d_model, d_state, d_conv, expand, headdim, ngroups, chunk_size, backend,
                         fused_impl, dt_min=dt_min, dt_max=dt_max)
    return build_lm(cfg, lambda i: Mamba2Mixer(mixer))


register_arch("mamba2", family="mamba2", description="Mamba-2: SSD with scalar decay per head "
              "(Dao & Gu 2024), chunked PyTorch or the Triton kernels of mamba_ssm or fla",
              mixer=Mamba2Mixer, letter="D", color=TAB20[2],
              tiny=dict(d_model=32, n_layers=2, d_state=8, headdim=8, chunk_size=8))(mamba2)

__all__ = [
    "Mamba2Config", "Mamba2Mixer", "GatedRMSNorm",
    "segsum", "ssd_quadratic", "ssd_recurrent", "ssd_chunked", "ssd_step",
    "fused_available", "ssd_fused", "ssd_step_fused",
]
