"""The count-based n-gram LM with interpolated Kneser-Ney smoothing: where the LM lineage
starts (n-gram -> feed-forward LM -> LSTM -> Transformer -> Mamba)."""
from __future__ import annotations

from archs._registry import TAB20, register_arch
from archs.ngram.model import NGramConfig, NGramLM, NGramState


@register_arch("ngram", family="ngram", color=TAB20[15], backends=("ref",), tiny=dict(order=3),
               description="Count-based n-gram LM, interpolated Kneser-Ney; trained by counting "
                           "the training tokens (archs.counting), its count tables are its state")
def ngram(vocab_size: int = 256, d_model: None = None, n_layers: None = None, *, order: int = 5,
          discount: float | None = None) -> NGramLM:
    """``d_model`` and ``n_layers`` are accepted for the common call shape and must stay None:
    a count table has no width to size and no layers (so no ``target_params`` either)."""
    for key, value in (("d_model", d_model), ("n_layers", n_layers)):
        if value is not None:
            raise ValueError(f"ngram has no {key} (a count table): leave it None "
                             f"(conf/arch/ngram.yaml sets {key}: null), got {value!r}")
    return NGramLM(NGramConfig(vocab_size, order, discount))


__all__ = ["NGramConfig", "NGramLM", "NGramState", "ngram"]
