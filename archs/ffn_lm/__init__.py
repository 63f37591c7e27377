"""The fixed-window feed-forward LM (Bengio et al. 2003): the neural n-gram model, the step
between count-based n-grams and recurrent networks in the LM lineage."""
from __future__ import annotations

from archs._registry import TAB20, register_arch
from archs.ffn_lm.layer import FFNLMConfig, FFNMixer
from archs.model import LanguageModel, LMConfig, build_lm


@register_arch("ffn_lm", family="ffn_lm", mixer=FFNMixer, letter="F", color=TAB20[17],
               description="Fixed-window feed-forward LM (Bengio et al. 2003): an MLP over the "
                           "concatenated last n-1 inputs; constant decode state",
               tiny=dict(d_model=32, n_layers=2, order=4, hidden=48))
def ffn_lm(vocab_size: int = 256, d_model: int = 128, n_layers: int = 1, *, order: int = 5,
           hidden: int | None = None, activation: str = "tanh", bias: bool = True,
           mlp: str = "none", **shell) -> LanguageModel:
    """One window MLP per block (the paper's model is one such layer, with no other MLP)."""
    cfg = LMConfig(vocab_size, d_model, n_layers, mlp=mlp, **shell)
    mixer = FFNLMConfig(d_model, order, hidden, activation, bias)
    return build_lm(cfg, lambda i: FFNMixer(mixer))


__all__ = ["FFNLMConfig", "FFNMixer", "ffn_lm"]
