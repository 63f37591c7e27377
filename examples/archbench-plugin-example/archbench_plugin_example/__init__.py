"""An archbench plugin: registers ``mingru`` (Feng et al. 2024, "Were RNNs All We Needed?").

archbench calls ``register()`` through the ``archbench.archs`` entry point; calling it
twice is harmless (the registry ignores an identical re-registration).
"""
from __future__ import annotations


def register() -> None:
    # Imported here, not at module level, so listing plugins stays cheap and a broken
    # import is reported by archbench with this plugin's name.
    from archbench_plugin_example.mingru import MinGRU, mingru
    from archs import register_arch

    # One call gives archbench everything: the builder, the mixer class (its backends) and
    # the letter "G" for hybrid layer patterns (e.g. hybrid pattern="GGGA"). Its plot colour
    # is picked from the ones no other architecture holds (archs.arch_colors); pass
    # color="#rrggbb" to choose one.
    register_arch("mingru", family="rnn", description="minGRU: a gated linear RNN trained in "
                  "parallel with a log-space scan (Feng et al. 2024)",
                  mixer=MinGRU, letter="G",
                  tiny=dict(d_model=32, n_layers=2))(mingru)
