"""The contract every sequence mixer honours.

A mixer maps (B, L, D) -> (B, L, D) and owns its decode state. The LM shell
(`archs.model.LanguageModel`) wraps mixers in residual blocks; an architecture
contributes nothing but mixers (and, for hybrids, a layer pattern).

Three forms of the same function, which must agree (the conformance suite checks it):

* ``forward(x)``            - parallel (training) form over a whole sequence;
* ``step(x_t, state)``      - one token, carrying the decode cache / recurrent state;
* ``prefill(x, state)``     - a chunk of tokens continuing from ``state``; used to
  evaluate long sequences in constant memory. The default runs ``step`` token by
  token (correct, slow); families override it with a chunked parallel form.

States are plain containers of tensors (dicts, lists, dataclasses). Their size in
bytes is what the cost harness reports against context length, so
``state_size_bytes`` counts the logical contents (a KV cache counts the tokens it
holds, not spare capacity).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

State = Any


def tensor_bytes(obj: Any) -> int:
    """Bytes held by all tensors in a nested state (dict / list / tuple / dataclass)."""
    if obj is None:
        return 0
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if hasattr(obj, "nbytes") and callable(obj.nbytes):
        return int(obj.nbytes())
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    if dataclasses.is_dataclass(obj):
        return sum(tensor_bytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return 0


class Mixer(nn.Module):
    """Base class for sequence mixers. Subclasses implement forward, init_state, step.

    Class attributes describe the mixer to the registry and the harness:
      backends:      the backend words this mixer accepts, from archs.backends' vocabulary
                     ("ref", "chunked", "fused", "auto"); the registry reads them from here
      state_growth:  "constant" if the decode state is independent of context length,
                     "linear" if it grows with it (a KV cache), "window" if bounded.
      relative_positions: whether it takes ``pos_encoding`` (rope / alibi act inside it);
                     a hybrid passes its pos_encoding on to such layers
      config_class:  the dataclass ``build`` fills from keyword arguments (None: the
                     constructor takes ``(d_model, **kwargs)`` itself)
      constant_buffers: names of floating-point buffers that are constants, not weights
                     (tables computed from the config). The conformance suite fails any
                     other floating-point buffer: a weight registered as a buffer is never
                     trained and missing from ``num_params``.
      causal:        True (the default) if output t depends only on inputs <= t, so the
                     model decodes token by token. False for a bidirectional mixer: the
                     conformance suite then reports its causal checks (causality, step /
                     prefill == forward, state size, the long checks) as "skipped:
                     bidirectional" instead of running them.
      exact_causality: True (the default) if the parallel form gives EXACTLY zero gradient
                     to future inputs (masks, scans, zero-padded convolutions: any form that
                     never adds a future term). The conformance suite then requires exact
                     zeros. Set False only for a form whose future terms cancel numerically
                     (an FFT convolution); the suite then allows a dtype-dependent fraction
                     of the largest past gradient (harness.conformance GRAD_LEAK_RTOL).
      accepts_initial_state: True if ``prefill(x, state)`` may start from ANY state of
                     ``init_state``'s structure (a fixed-size recurrent state; the harness
                     fills it with noise or a previous sequence's final state) and is
                     differentiable w.r.t. the parameters, so training can run through it
                     (``train.initial_state``). False (the default) for caches of past
                     tokens, such as attention's KV cache.

    Methods the conformance suite reads (override them; the defaults are honest but vague):
      ``tiles()``             the sizes the forms tile the sequence by, so boundaries are
                              tested on both sides instead of guessed;
      ``resolved_backend()``  the code path that runs (recorded in every result row).
    """

    backends: tuple[str, ...] = ("ref",)
    state_growth: str = "constant"
    relative_positions: bool = False
    config_class: type | None = None
    constant_buffers: tuple[str, ...] = ()
    causal: bool = True
    exact_causality: bool = True

    @classmethod
    def build(cls, d_model: int, **kwargs: Any) -> "Mixer":
        """One mixer from keyword arguments (how hybrid layer patterns build each layer)."""
        if cls.config_class is None:
            return cls(d_model, **kwargs)
        return cls(cls.config_class(d_model, **kwargs))
    accepts_initial_state: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.layer_idx: int | None = None

    # -- the three forms -------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, L, D)
        raise NotImplementedError

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> State:
        raise NotImplementedError

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One token: x_t (B, D) -> y_t (B, D), new state."""
        raise NotImplementedError

    def prefill(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """A chunk continuing from ``state``: (B, L, D) -> (B, L, D), new state."""
        ys = []
        for t in range(x.shape[1]):
            y_t, state = self.step(x[:, t], state)
            ys.append(y_t)
        return torch.stack(ys, dim=1), state

    # -- bookkeeping -------------------------------------------------------------------
    def state_size_bytes(self, state: State) -> int:
        return tensor_bytes(state)

    def expected_state_bytes(self, batch_size: int, context_len: int,
                             dtype: torch.dtype) -> int | None:
        """The analytic decode-state size after ``context_len`` tokens, or None if undeclared.

        The conformance suite checks it against ``state_size_bytes`` of a real state, so
        the harness can report state size at lengths it never decodes.
        """
        return None

    def sequence_flops(self, batch_size: int, seq_len: int) -> int | None:
        """Analytic forward FLOPs of the token mixing itself (not the nn.Linear projections,
        which the LM shell counts from their shapes): attention's score and value
        products, a scan's recurrence, a convolution. None if undeclared."""
        return None

    def tiles(self) -> dict[str, int]:
        """The sizes (in tokens) this mixer's forms tile a sequence by: ``{name: size}``.

        A chunked form's chunk, a scan's block, an attention window, a segment, a cache's
        capacity or growth step, a length at which an "auto" backend switches path... Bugs
        live at these boundaries, so the conformance suite checks causality and the
        agreement of forward / prefill / step on both sides of every multiple it samples
        (first few, powers of two, last before the checked length), and prefills in chunks
        that straddle them. Declare every size the code path in use tiles by; {} = none.
        """
        return {}

    def resolved_backend(self, device: torch.device | str | None = None,
                         seq_len: int | None = None) -> str:
        """The code path that actually runs on ``device`` for a ``seq_len``-token input
        (recorded in every result row; some "auto" choices depend on the length).

        Default: ``self.backend`` if the mixer sets one, else its single declared backend
        (``backends = ("scan",)`` reports "scan"). A mixer declaring several backends and
        no ``self.backend`` must override this (the harness never guesses a label).
        """
        backend = getattr(self, "backend", None)
        if backend is not None:
            return backend
        if len(self.backends) == 1:
            return self.backends[0]
        raise NotImplementedError(
            f"{type(self).__name__} declares backends {self.backends} but neither sets "
            f"self.backend nor overrides resolved_backend(); say which one runs")

    def aux_loss(self) -> torch.Tensor | None:
        """An auxiliary training loss from the last forward (e.g. MoE balance), or None."""
        return None

    @property
    def param_dtype(self) -> torch.dtype:
        p = next(self.parameters(), None)
        return p.dtype if p is not None else torch.get_default_dtype()

    @property
    def param_device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")
