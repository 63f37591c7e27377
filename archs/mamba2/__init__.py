"""Mamba-2 / SSD (Dao & Gu 2024, "Transformers are SSMs").

Importable on a CPU-only machine: mamba_ssm / causal_conv1d in ``fast`` load lazily.
"""
from archs.mamba2.layer import GatedRMSNorm, Mamba2Config, Mamba2Mixer
from archs.mamba2.ref import segsum, ssd_chunked, ssd_naive, ssd_recurrent, ssd_step
from archs.mamba2.fast import fast_available, ssd_fast, ssd_step_fast
from archs._registry import register_arch
from archs.model import LanguageModel, LMConfig, build_lm


def mamba2(vocab_size: int = 256, d_model: int = 128, n_layers: int = 2, *, d_state: int = 64,
           d_conv: int = 4, expand: int = 2, headdim: int = 64, ngroups: int = 1,
           chunk_size: int = 64, backend: str = "auto", mlp: str = "none", dt_min: float = 0.001,
           dt_max: float = 0.1, **shell) -> LanguageModel:
    """Mamba-2 LM: like Mamba, blocks are the mixer alone (no MLP) unless ``mlp`` says otherwise.
    ``dt_min``/``dt_max``: the Δ initialisation range (log-uniform; the paper's 0.001-0.1)."""
    cfg = LMConfig(vocab_size, d_model, n_layers, mlp=mlp, **shell)
    mixer = Mamba2Config(d_model, d_state, d_conv, expand, headdim, ngroups, chunk_size, backend,
                         dt_min=dt_min, dt_max=dt_max)
    return build_lm(cfg, lambda i: Mamba2Mixer(mixer))


register_arch("mamba2", family="mamba2", description="Mamba-2: SSD with scalar decay per head "
              "(Dao & Gu 2024), chunked PyTorch or mamba_ssm Triton kernels",
              backends=Mamba2Mixer.backends, requires=("mamba_ssm", "causal_conv1d"),
              tiny=dict(d_model=32, n_layers=2, d_state=8, headdim=8, chunk_size=8))(mamba2)

__all__ = [
    "Mamba2Config", "Mamba2Mixer", "GatedRMSNorm",
    "segsum", "ssd_naive", "ssd_recurrent", "ssd_chunked", "ssd_step",
    "fast_available", "ssd_fast", "ssd_step_fast",
]
