"""Sliding-window attention with sinks: masks, backends, bounded decode cache."""
import functools

import pytest
import torch

from archs import create_arch
from archs.attention import Attention, AttentionConfig
from archs.attention.fused import attention_sdpa
from archs.attention.ref import attention_math, causal_mask
from archs.blocks import heads_merge
from archs.sliding_window import (SlidingWindowAttention, SlidingWindowConfig, WindowCache,
                                  windowed_attention)

D, H = 16, 4


def _layer(window=4, n_sink=1, backend="ref", pos="rope", n_kv_heads=None, block_size=None, seed=0):
    torch.manual_seed(seed)
    cfg = SlidingWindowConfig(D, H, n_kv_heads, pos, backend=backend, window=window, n_sink=n_sink,
                              block_size=block_size)
    return SlidingWindowAttention(cfg)


def _x(length, batch=2, seed=1, grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, D, generator=g).requires_grad_(grad)


# --- the mask: who influences whom ------------------------------------------------------------

@pytest.mark.parametrize("backend", ["ref", "fused", "chunked"])
def test_token_outside_window_has_no_influence_but_sink_does(backend):
    window, n_sink, length = 4, 1, 15
    layer = _layer(window, n_sink, backend, block_size=3)
    x = _x(length)
    base = layer(x)
    t = length - 1
    for j, visible in [(0, True), (t - window, False), (t - window - 3, False), (t - window + 1, True)]:
        bumped = x.clone()
        bumped[:, j] += 1.0
        changed = (layer(bumped)[:, t] - base[:, t]).abs().max().item()
        assert (changed > 1e-4) == visible, (j, changed)


def test_without_sinks_the_first_token_is_forgotten():
    layer = _layer(window=3, n_sink=0)
    x = _x(10)
    bumped = x.clone()
    bumped[:, 0] += 1.0
    assert torch.equal(layer(x)[:, 3:], layer(bumped)[:, 3:])


@pytest.mark.parametrize("backend", ["ref", "fused", "chunked"])
@pytest.mark.parametrize("n_sink", [0, 3])
@pytest.mark.parametrize("pos", ["rope", "alibi"])
def test_window_at_least_length_is_full_causal_attention(backend, n_sink, pos):
    length = 11
    window_layer = _layer(window=length, n_sink=n_sink, backend=backend, pos=pos, block_size=4)
    dense = Attention(AttentionConfig(D, H, pos_encoding=pos, backend="ref"))
    dense.load_state_dict(window_layer.state_dict())
    x = _x(length)
    assert torch.allclose(window_layer(x), dense(x), atol=1e-5)
    # and by hand: full causal softmax attention over the same projections
    q, k, v = window_layer._project(x, 0)
    pos_ids = torch.arange(length)
    bias = dense.alibi(pos_ids, pos_ids) if pos == "alibi" else None
    by_hand = window_layer.o_proj(heads_merge(attention_math(q, k, v, bias=bias)))
    assert torch.allclose(window_layer(x), by_hand, atol=1e-5)


# --- backends agree -----------------------------------------------------------------------------

@pytest.mark.parametrize("length", [1, 7, 23])
@pytest.mark.parametrize("window,n_sink,block_size", [(3, 0, None), (5, 2, None), (5, 2, 2), (4, 1, 7)])
@pytest.mark.parametrize("pos,n_kv_heads", [("rope", None), ("alibi", 2), ("none", 1)])
def test_math_sdpa_blocked_agree_outputs_and_gradients(length, window, n_sink, block_size, pos, n_kv_heads):
    results = {}
    for backend in ("ref", "fused", "chunked"):
        layer = _layer(window, n_sink, backend, pos, n_kv_heads, block_size)
        x = _x(length, grad=True)
        y = layer(x)
        grads = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])
        results[backend] = (y, grads)
    ref_y, ref_grads = results["ref"]
    for backend in ("fused", "chunked"):
        y, grads = results[backend]
        assert torch.allclose(y, ref_y, atol=1e-5), backend
        for a, b in zip(grads, ref_grads):
            assert torch.allclose(a, b, atol=1e-4), backend


@pytest.mark.parametrize("run_start,lq", [(0, 9), (6, 3), (6, 1), (2, 12)])
def test_windowed_attention_matches_reference_mask_for_cache_layouts(run_start, lq):
    """The sinks + run layout (as prefill builds it from the cache) == the L×L reference."""
    window, n_sink, total = 4, 2, run_start + 12
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, total, 8, generator=g) for _ in range(3))
    ref = attention_math(q, k, v, mask=causal_mask(total, total, window=window, n_sink=n_sink))[:, :, -lq:]
    sinks = min(n_sink, total)
    for block_size in (None, 1, 3):
        for kernel in (attention_math, functools.partial(attention_sdpa, kernel=None)):
            out = windowed_attention(q[:, :, -lq:], k[:, :, run_start:], v[:, :, run_start:],
                                     k[:, :, :sinks], v[:, :, :sinks], run_start=run_start,
                                     window=window, kernel=kernel, block_size=block_size)
            assert torch.allclose(out, ref, atol=1e-5), (block_size, kernel)


def test_blocked_form_never_builds_length_squared_scores():
    window, n_sink, length = 4, 1, 64
    seen = []

    def spy(q, k, v, **kw):
        seen.append(k.shape[2])
        return attention_math(q, k, v, **kw)

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, length, 8, generator=g) for _ in range(3))
    windowed_attention(q, k, v, k[:, :, :n_sink], v[:, :, :n_sink], run_start=0, window=window,
                       kernel=spy, block_size=window)
    assert seen == [n_sink + 2 * window - 1]  # keys per query block: sinks + block + window - 1


# --- decoding -------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("backend", ["auto", "ref"])
def test_decode_cache_stays_bounded_and_matches_parallel_over_200_steps(backend):
    window, n_sink, steps = 6, 2, 200
    layer = _layer(window, n_sink, backend).eval()
    x = _x(steps, batch=1)
    bound = layer.expected_state_bytes(1, 10**9, torch.float32)
    state = layer.init_state(1)
    ys = []
    with torch.no_grad():
        for t in range(steps):
            y_t, state = layer.step(x[:, t], state)
            ys.append(y_t)
            size = layer.state_size_bytes(state)
            assert size == layer.expected_state_bytes(1, t + 1, torch.float32) <= bound
        assert torch.allclose(torch.stack(ys, 1), layer(x), atol=1e-5)
    assert bound == 2 * 1 * H * (window + n_sink) * (D // H) * 4
    assert state.ring_k.shape[2] == window and state.sink_k.shape[2] == n_sink  # never reallocated


@pytest.mark.parametrize("splits", [(1, 2, 3), (5, 5), (13, 14), (2, 30)])
@pytest.mark.parametrize("backend", ["auto", "fused", "chunked"])
def test_prefill_in_chunks_matches_parallel(splits, backend):
    layer = _layer(window=5, n_sink=3, backend=backend, block_size=2).eval()
    x = _x(41)
    with torch.no_grad():
        state, outs, start = layer.init_state(2), [], 0
        for end in (*splits, 41):
            y, state = layer.prefill(x[:, start:end], state)
            outs.append(y)
            start = end
        assert torch.allclose(torch.cat(outs, 1), layer(x), atol=1e-5)


def test_ring_cache_keeps_sinks_and_the_last_window_in_order():
    cache = WindowCache.empty(1, 1, 1, window=3, n_sink=2)
    pos = lambda a, b: torch.arange(a, b, dtype=torch.float32).view(1, 1, -1, 1)
    cache.write(pos(0, 1), pos(0, 1))
    cache.write(pos(1, 9), pos(1, 9))  # a chunk that crosses the sink boundary and wraps the ring
    cache.write(pos(9, 10), pos(9, 10))
    k, _, start = cache.recent()
    assert cache.sinks()[0].flatten().tolist() == [0.0, 1.0]
    assert start == 7 and k.flatten().tolist() == [7.0, 8.0, 9.0]
    assert cache.nbytes() == 2 * (2 + 3) * 4


# --- options and errors -----------------------------------------------------------------------------

def test_auto_picks_blocked_for_long_inputs_and_reports_it():
    layer = _layer(window=4, backend="auto")
    assert layer.resolved_backend() == "fused|chunked"
    assert layer.resolved_backend(seq_len=15) == "fused" and layer.resolved_backend(seq_len=16) == "chunked"
    layer(_x(20))
    assert layer.resolved_backend() == "chunked"
    layer(_x(5))
    assert layer.resolved_backend() == "fused"
    assert _layer(backend="ref").resolved_backend(seq_len=10**6) == "ref"


def test_registered_model_and_its_tiny_variant():
    model = create_arch("sliding_window", vocab_size=32, d_model=32, n_layers=2, window=4, n_sink=1,
                        backend="chunked")
    assert model.backends() == "chunked"
    assert model(torch.zeros(1, 9, dtype=torch.long)).shape == (1, 9, 32)
    assert model.expected_state_bytes(1, 10_000) == model.expected_state_bytes(1, 5)


@pytest.mark.parametrize("kw,match", [
    ({"window": 0}, "window must be a positive integer"),
    ({"window": -3}, "window must be a positive integer"),
    ({"window": 2.5}, "window must be a positive integer"),
    ({"n_sink": -1}, r"n_sink must be an integer >= 0"),
    ({"block_size": 0}, "block_size must be a positive integer or None"),
    ({"blocked_min_ratio": 0}, "blocked_min_ratio must be positive"),
    ({"backend": "flash"}, "unknown backend 'flash'"),
])
def test_bad_options_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        create_arch("sliding_window", vocab_size=16, d_model=16, n_layers=1, **kw)
