"""archbench architectures: a registry of sequence mixers wrapped in one LM shell.

    >>> from archs import create_arch, list_archs
    >>> model = create_arch("transformer", vocab_size=256, d_model=64, n_layers=2)
    >>> logits = model(tokens)                      # (B, L) -> (B, L, V)
    >>> state = model.init_state(batch_size=1)
    >>> logits_t, state = model.step(tokens[:, 0], state)

Families live in sub-packages (attention/, mamba/, ...) and register on first registry
use; nothing here imports an optional GPU package.
"""
from archs._registry import (ArchInfo, arch_colors, arch_info, create_arch, list_archs,
                             mixer_letters, plugin_errors, register_arch, register_mixer_letter)
from archs.backends import BackendUnavailableError
from archs.mixer import Mixer, tensor_bytes
from archs.model import LanguageModel, LMConfig, ModelState, build_lm
from archs.positional import SequenceTooLongError

__all__ = [
    "ArchInfo", "BackendUnavailableError", "LMConfig", "LanguageModel", "Mixer", "ModelState",
    "SequenceTooLongError", "arch_colors", "arch_info", "build_lm", "create_arch", "list_archs",
    "mixer_letters", "plugin_errors", "register_arch", "register_mixer_letter", "tensor_bytes",
]
