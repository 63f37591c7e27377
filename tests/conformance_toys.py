"""A clean toy mixer and planted-bug variants of it, for the conformance mutation tests.

``PrefixMean``: y_t = out(mean of v(x_j), j <= t); state = running sum (in float32 for a
bfloat16 model, float64 for a float64 one: archs/precision.py). Its parallel form works in
chunks of CHUNK tokens, declared as a tile. Each subclass plants one bug.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from archs import register_arch
from archs._registry import _REGISTRY
from archs.mixer import Mixer, tensor_bytes
from archs.model import LMConfig, build_lm
from archs.precision import up

CHUNK = 64
LENGTHS = (1024,)  # past 512 and many chunks; the suite's own default goes to 4096 as well
# A position no sampled gradient position or cut of the long causality check lands on at
# 1024 (tiles of 64: 63/64, 575/576, 959/960, 511/512, 1022), inside one uneven prefill
# chunk of both the old and the new decode check.
ONE_POSITION = 800


def acc_dtype(dtype: torch.dtype | None) -> torch.dtype:
    return torch.promote_types(dtype or torch.float32, torch.float32)


class PrefixMean(Mixer):
    def __init__(self, d: int):
        super().__init__()
        self.v, self.out = nn.Linear(d, d), nn.Linear(d, d)

    def tiles(self):
        return {"chunk": CHUNK}

    def _mix(self, v, total, count):  # v (B, L, D) from a state (total (B, D), count int)
        outs = []
        for start in range(0, v.shape[1], CHUNK):  # chunk by chunk, carrying the sum
            c = v[:, start:start + CHUNK]
            sums = total[:, None] + c.cumsum(1)
            n = count + start + torch.arange(1, c.shape[1] + 1, dtype=v.dtype)
            outs.append(sums / n[:, None])
            total = sums[:, -1]
        return torch.cat(outs, 1), total

    def forward(self, x):
        v = up(self.v(x))
        y, _ = self._mix(v, v.new_zeros(x.shape[0], x.shape[2]), 0)
        return self.out(y.to(x.dtype))

    def init_state(self, batch_size, device=None, dtype=None):
        return {"total": torch.zeros(batch_size, self.v.in_features, dtype=acc_dtype(dtype)), "count": 0}

    def prefill(self, x, state):
        y, total = self._mix(up(self.v(x)), state["total"], state["count"])
        return self.out(y.to(x.dtype)), {"total": total, "count": state["count"] + x.shape[1]}

    def step(self, x_t, state):
        y, state = self.prefill(x_t[:, None], state)
        return y[:, 0], state

    def expected_state_bytes(self, batch_size, context_len, dtype):
        return batch_size * self.v.in_features * acc_dtype(dtype).itemsize


def toy(mixer_cls, d=16, dtype=torch.float32):
    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=64, d_model=d, n_layers=1)
    return build_lm(cfg, lambda i: mixer_cls(d)).to(dtype).eval()


@pytest.fixture
def registered():
    """register(name, mixer_cls, **shell_defaults) -> name: a toy architecture in the registry
    for one test (``causal=False`` for a bidirectional mixer's model)."""
    names = []

    def register(name, mixer_cls, **defaults):
        def builder(vocab_size=64, d_model=16, n_layers=1, **shell):
            shell = {**defaults, **shell}
            return build_lm(LMConfig(vocab_size, d_model, n_layers, **shell), lambda i: mixer_cls(d_model))
        register_arch(name, family="toy", tiny=dict(d_model=16, n_layers=1))(builder)
        names.append(name)
        return name

    yield register
    for name in names:
        _REGISTRY.pop(name, None)


# --- bugs the suite caught before issue 27 -------------------------------------------------

class LeakFrom512(PrefixMean):
    def forward(self, x):
        y = super().forward(x)
        if x.shape[1] > 512:  # position t >= 512 peeks at token t + 1
            y = torch.cat([y[:, :512], y[:, 512:-1] + x[:, 513:], y[:, -1:]], 1)
        return y


class LeakAtChunkEnd(PrefixMean):
    def forward(self, x):
        y = super().forward(x)
        last = torch.arange(CHUNK - 1, max(x.shape[1] - 1, CHUNK - 1), CHUNK)  # last of each chunk
        return y.index_add(1, last, x[:, last + 1])


class DriftFrom50(PrefixMean):
    def step(self, x_t, state):
        y, state = super().step(x_t, state)
        return y + 1e-2 * (state["count"] > 50), state


class PrefillDropsCarryAcrossChunks(PrefixMean):
    def prefill(self, x, state):
        start = state["count"]
        if start // CHUNK != (start + x.shape[1] - 1) // CHUNK and start % CHUNK:
            state = {**state, "total": torch.zeros_like(state["total"])}  # forgot the carry
        return super().prefill(x, state)


class BatchNormalised(PrefixMean):
    def forward(self, x):
        return super().forward(x - x.mean(0, keepdim=True))


class TrainDiffers(PrefixMean):
    def forward(self, x):
        return super().forward(x) * (1.1 if self.training else 1.0)


class WeightAsBuffer(PrefixMean):
    def __init__(self, d):
        super().__init__(d)
        self.register_buffer("gain", torch.randn(d))

    def forward(self, x):
        return super().forward(x) * self.gain

    def prefill(self, x, state):
        y, state = super().prefill(x, state)
        return y * self.gain, state


class HalvedState(PrefixMean):
    def state_size_bytes(self, state):
        return tensor_bytes(state) // 2

    def expected_state_bytes(self, batch_size, context_len, dtype):
        return super().expected_state_bytes(batch_size, context_len, dtype) // 2


class ListState(PrefixMean):
    def init_state(self, batch_size, device=None, dtype=None):
        return {**super().init_state(batch_size, device, dtype), "history": [0.0]}

    def prefill(self, x, state):
        y, new = super().prefill(x, state)
        return y, {**new, "history": state["history"] + [float(x.sum())]}


class Noisy(PrefixMean):
    def forward(self, x):
        return super().forward(x) + 1e-2 * torch.randn_like(x)


# --- the blind spots of issue 27 -----------------------------------------------------------

class LeakAtOnePosition(PrefixMean):
    """Output ONE_POSITION sees input ONE_POSITION + 1, in the forward and in a prefill chunk
    holding both alike (step, one token at a time, cannot)."""

    def _leak(self, x, y, start):  # x, y (B, L, D) from absolute position ``start``
        p = ONE_POSITION - start
        if 0 <= p < x.shape[1] - 1:
            y = torch.cat([y[:, :p], y[:, p:p + 1] + x[:, p + 1:p + 2], y[:, p + 1:]], 1)
        return y

    def forward(self, x):
        return self._leak(x, super().forward(x), 0)

    def prefill(self, x, state):
        y, new = super().prefill(x, state)
        return self._leak(x, y, state["count"]), new


class ForwardOnlyLeakAtOnePosition(LeakAtOnePosition):
    """The same leak in the forward only: it shows as prefill != forward (and step != forward)."""

    def prefill(self, x, state):
        return PrefixMean.prefill(self, x, state)


# Step's state gains this relative error per token (a recurrence that rounds or decays the
# wrong way): ~2e-5 per 100 tokens at the output, below 1e-4 of its scale over 160 steps,
# far above it by 1024.
DRIFT = 1e-6


class SlowDrift(PrefixMean):
    def step(self, x_t, state):
        y, state = super().step(x_t, state)
        return y, {**state, "total": state["total"] * (1 + DRIFT)}


# 1e-7 of the next token at every position (~1e-6 of the largest past gradient, the mixer
# sees normalised inputs): below a 1e-5 gradient tolerance and far below
# 1e-4 of the output, yet an exact causal form gives exactly 0.
SMALL = 1e-7


class SmallLeak(PrefixMean):
    def _leak(self, x, y):
        return torch.cat([y[:, :-1] + SMALL * x[:, 1:], y[:, -1:]], 1)

    def forward(self, x):
        return self._leak(x, super().forward(x))

    def prefill(self, x, state):
        y, new = super().prefill(x, state)
        return self._leak(x, y), new


class SmallLeakDeclaredInexact(SmallLeak):
    exact_causality = False


class StateInModelDtype(PrefixMean):
    """Decode keeps its running sum in the model's dtype: fine in float32 and float64, a
    sum that stops growing in bfloat16 (8 bits of mantissa)."""

    def init_state(self, batch_size, device=None, dtype=None):
        return {"total": torch.zeros(batch_size, self.v.in_features, dtype=dtype), "count": 0}

    def prefill(self, x, state):
        y, total = self._mix(self.v(x), state["total"], state["count"])
        return self.out(y), {"total": total, "count": state["count"] + x.shape[1]}

    def expected_state_bytes(self, batch_size, context_len, dtype):
        return batch_size * self.v.in_features * dtype.itemsize


class Float32Inside(PrefixMean):
    """The parallel form computes in float32 whatever the model's dtype (a .float() left in)."""

    def forward(self, x):
        v = self.v(x).float()
        y, _ = self._mix(v, v.new_zeros(x.shape[0], x.shape[2]), 0)
        return self.out(y.to(x.dtype))


class DropoutInEval(PrefixMean):
    def forward(self, x):
        return F.dropout(super().forward(x), 0.1, training=True)  # ignores eval mode


class LeaksInBatches(PrefixMean):
    """The forward sees the next token only when the batch holds more than one row."""

    def forward(self, x):
        y = super().forward(x)
        return torch.cat([y[:, :-1] + 0.1 * x[:, 1:], y[:, -1:]], 1) if x.shape[0] > 1 else y


class Bidirectional(PrefixMean):
    """y_t = out(mean of v over the whole sequence): no causal order, no decoding."""

    causal = False

    def forward(self, x):
        v = up(self.v(x))
        return self.out(v.mean(1, keepdim=True).expand_as(v).to(x.dtype))
