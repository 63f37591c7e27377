"""Mutation tests: toy mixers with planted bugs that start past a boundary must fail the
conformance suite with the right message, and the clean toy must pass it - so the suite
cannot silently weaken again (each bug below once passed it)."""
import pytest
import torch
from torch import nn

from archs import register_arch
from archs._registry import _REGISTRY
from archs.mixer import Mixer, tensor_bytes
from archs.model import LMConfig, build_lm
from harness.conformance import CHECKS, ConformanceError, assert_conformance, run_check

CHUNK = 64
LENGTHS = (1024,)  # past 512 and many chunks; the suite's own default goes to 4096 as well


class PrefixMean(Mixer):
    """Clean toy: y_t = out(mean of v(x_j), j <= t) + a gated copy of x_t; state = running sum.
    Its parallel form works in chunks of CHUNK tokens (declared as a tile)."""

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
        y, _ = self._mix(self.v(x), x.new_zeros(x.shape[0], x.shape[2]), 0)
        return self.out(y)

    def init_state(self, batch_size, device=None, dtype=None):
        return {"total": torch.zeros(batch_size, self.v.in_features), "count": 0}

    def prefill(self, x, state):
        y, total = self._mix(self.v(x), state["total"], state["count"])
        return self.out(y), {"total": total, "count": state["count"] + x.shape[1]}

    def step(self, x_t, state):
        y, state = self.prefill(x_t[:, None], state)
        return y[:, 0], state

    def expected_state_bytes(self, batch_size, context_len, dtype):
        return batch_size * self.v.in_features * 4


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
        return batch_size * self.v.in_features * 2


class ListState(PrefixMean):
    def init_state(self, batch_size, device=None, dtype=None):
        return {**super().init_state(batch_size), "history": [0.0]}

    def prefill(self, x, state):
        y, new = super().prefill(x, state)
        return y, {**new, "history": state["history"] + [float(x.sum())]}


class Noisy(PrefixMean):
    def forward(self, x):
        return super().forward(x) + 1e-2 * torch.randn_like(x)


def toy(mixer_cls, d=16):
    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=64, d_model=d, n_layers=1)
    return build_lm(cfg, lambda i: mixer_cls(d)).float().eval()


# (mixer, the check that must fail, what its message must say)
PLANTED = [
    (LeakFrom512, "long_causality", r"causality leak at length 1024: .* position 51[23]"),
    (LeakAtChunkEnd, "long_causality", r"causality leak at length 1024: .*last of chunk=64"),
    (DriftFrom50, "long_decode", r"step from position 0 .* first disagreement at position 5[01]"),
    (PrefillDropsCarryAcrossChunks, "long_decode", r"prefill in chunks .* at length 1024"),
    (BatchNormalised, "batch_independence", r"output depends on other rows of the batch"),
    (BatchNormalised, "long_causality", r"output depends on other rows of the batch: at length 1024"),
    (TrainDiffers, "train_eval", r"train mode differs from eval mode"),
    (WeightAsBuffer, "buffers", r"buffer 'blocks.0.mixer.gain' .*make it an nn.Parameter"),
    (HalvedState, "state_size", r"state_size_bytes says 64 B but its state's tensors hold 128 B"),
    (ListState, "state_size", r"\['history'\] is a list holding Python numbers, which the suite cannot count"),
    (Noisy, "determinism", r"not deterministic"),
    (Noisy, "long_causality", r"not deterministic at length 1024"),
]


@pytest.mark.parametrize("mixer,check,message", PLANTED, ids=lambda v: getattr(v, "__name__", None))
def test_planted_bug_fails_its_check_with_the_right_message(mixer, check, message):
    with pytest.raises(ConformanceError, match=message):
        CHECKS[check](toy(mixer), lengths=LENGTHS, rebuild=lambda seed: toy(mixer))


@pytest.mark.parametrize("mixer", [LeakFrom512, LeakAtChunkEnd, DriftFrom50, PrefillDropsCarryAcrossChunks],
                         ids=lambda m: m.__name__)
def test_planted_bugs_pass_the_old_short_checks(mixer):
    """These bugs start past what a ~21-token check sees: the short checks pass them."""
    model = toy(mixer)
    for check in ("causality", "step_matches_forward", "prefill_matches_forward"):
        CHECKS[check](model)


@pytest.mark.parametrize("check", list(CHECKS))
def test_clean_toy_passes_every_check(check):
    CHECKS[check](toy(PrefixMean), lengths=LENGTHS, rebuild=lambda seed: toy(PrefixMean))


@pytest.fixture
def registered():
    names = []

    def register(name, mixer_cls):
        def builder(vocab_size=64, d_model=16, n_layers=1, **shell):
            return build_lm(LMConfig(vocab_size, d_model, n_layers, **shell), lambda i: mixer_cls(d_model))
        register_arch(name, family="toy", tiny=dict(d_model=16, n_layers=1))(builder)
        names.append(name)
        return name

    yield register
    for name in names:
        _REGISTRY.pop(name, None)


def test_assert_conformance_names_the_failed_check_and_passes_the_clean_toy(registered):
    assert_conformance(registered("toy_clean", PrefixMean), lengths=LENGTHS)
    with pytest.raises(ConformanceError, match=r"^long_causality: causality leak at length 1024"):
        assert_conformance(registered("toy_leak", LeakFrom512), lengths=LENGTHS)
    result = run_check("toy_leak", "causality")  # the short check alone misses it
    assert result.passed, result.detail


def test_a_leak_planted_in_a_builtin_past_512_tokens_fails_the_suite(monkeypatch):
    """The issue's first report: a built-in's parallel forward leaking only past 512 tokens."""
    from archs.linear_attention.layer import LinearAttentionMixer

    clean = LinearAttentionMixer.forward

    def leaky(self, x):
        y = clean(self, x)
        return y if x.shape[1] <= 512 else torch.cat([y[:, :-1] + 0.1 * x[:, 1:], y[:, -1:]], 1)

    monkeypatch.setattr(LinearAttentionMixer, "forward", leaky)
    assert run_check("linear_attention", "causality").passed  # 21 tokens: unseen
    result = run_check("linear_attention", "long_causality", lengths=LENGTHS)
    assert not result.passed and "causality leak at length 1024" in result.detail, result.detail
