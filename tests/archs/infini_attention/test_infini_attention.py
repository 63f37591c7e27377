"""Infini-attention: the paper's equations, gate limits, segment-buffer decoding, bounded state."""
import pytest
import torch
import torch.nn.functional as F

from archs import create_arch
from archs.attention.ref import attention_math
from archs.blocks import heads_merge
from archs.infini_attention import (InfiniAttention, InfiniAttentionConfig, feature_map,
                                    memory_read, memory_write)

D, H = 16, 4
DH = D // H


def _layer(segment_len=5, update="linear", pos="rope", backend="ref", seed=0):
    torch.manual_seed(seed)
    layer = InfiniAttention(InfiniAttentionConfig(D, H, pos_encoding=pos, backend=backend,
                                                  segment_len=segment_len, update=update))
    with torch.no_grad():  # distinct gates per head, so a mixed-up head or gate shows
        layer.beta.copy_(torch.linspace(-1.5, 1.5, H))
    return layer.eval()


def _x(length, batch=2, seed=1):
    return torch.randn(batch, length, D, generator=torch.Generator().manual_seed(seed))


def _segment_local_attention(layer, x):
    """Causal attention restricted to each segment, built independently: one L×L block-diagonal
    mask, positions absolute (rope/alibi are relative, so this equals within-segment positions)."""
    length, seg = x.shape[1], layer.cfg.segment_len
    q, k, v = layer._project(x, 0)  # the dense layer's projection, absolute rope positions
    i = torch.arange(length)
    mask = (i[None, :] <= i[:, None]) & (i[None, :] // seg == i[:, None] // seg)
    bias = layer.alibi(i, i) if layer.alibi is not None else None
    return attention_math(q, k, v, mask=mask, bias=bias)  # (B, H, L, Dh)


# --- the gate's limits -----------------------------------------------------------------------------

@pytest.mark.parametrize("update", ["linear", "delta"])
@pytest.mark.parametrize("pos", ["rope", "alibi", "none"])
@pytest.mark.parametrize("backend", ["ref", "fused"])
def test_local_only_gate_equals_segment_local_attention(update, pos, backend):
    layer = _layer(segment_len=5, update=update, pos=pos, backend=backend)
    with torch.no_grad():
        layer.beta.fill_(-1e4)  # sigmoid(-1e4) == 0 in float32: memory switched off
        x = _x(23)
        expected = layer.o_proj(heads_merge(_segment_local_attention(layer, x)))
        assert torch.allclose(layer(x), expected, atol=1e-5)


def test_one_segment_gets_nothing_from_memory():
    layer = _layer(segment_len=8)
    with torch.no_grad():
        x = _x(8)
        gate = torch.sigmoid(layer.beta).view(1, H, 1, 1)
        expected = layer.o_proj(heads_merge((1 - gate) * _segment_local_attention(layer, x)))
        assert torch.allclose(layer(x), expected, atol=1e-5)
        # ... while from the second segment on, the memory does contribute
        longer = _x(16)
        local_only = layer.o_proj(heads_merge((1 - gate) * _segment_local_attention(layer, longer)))
        diff = (layer(longer) - local_only).abs().amax(dim=(0, 2))
        assert diff[:8].max() < 1e-5 and diff[8:].min() > 1e-3


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_parallel_form_follows_the_papers_equations(update):
    """Three segments by hand: Eq. 3 read, Eq. 4/5 write, Eq. 6 gate, written out here."""
    seg = 4
    layer = _layer(segment_len=seg, update=update, pos="none")
    with torch.no_grad():
        x = _x(3 * seg)
        q, k, v = layer._raw_qkv(x)
        local = _segment_local_attention(layer, x)
        sigma = lambda t: F.elu(t) + 1
        mem, z = torch.zeros(2, H, DH, DH), torch.zeros(2, H, DH)
        outs = []
        for s in range(3):
            qs, ks, vs = (t[:, :, s * seg:(s + 1) * seg] for t in (q, k, v))
            den = (sigma(qs) @ z[..., None]).clamp_min(1e-6)
            a_mem = (sigma(qs) @ mem) / den
            g = torch.sigmoid(layer.beta).view(1, H, 1, 1)
            outs.append(g * a_mem + (1 - g) * local[:, :, s * seg:(s + 1) * seg])
            written = vs
            if update == "delta" and s > 0:
                written = vs - (sigma(ks) @ mem) / (sigma(ks) @ z[..., None])
            mem = mem + sigma(ks).transpose(-1, -2) @ written
            z = z + sigma(ks).sum(dim=2)
        expected = layer.o_proj(heads_merge(torch.cat(outs, dim=2)))
        assert torch.allclose(layer(x), expected, atol=1e-5)


# --- decoding agrees with the parallel form ----------------------------------------------------------

@pytest.mark.parametrize("update", ["linear", "delta"])
@pytest.mark.parametrize("pos", ["rope", "alibi"])
def test_step_matches_parallel_across_many_segments(update, pos):
    layer = _layer(segment_len=5, update=update, pos=pos)
    x = _x(37)
    with torch.no_grad():
        state, ys = layer.init_state(2), []
        for t in range(x.shape[1]):
            y_t, state = layer.step(x[:, t], state)
            ys.append(y_t)
        assert torch.allclose(torch.stack(ys, 1), layer(x), atol=1e-5)
    assert state.n_local == 37 % 5


@pytest.mark.parametrize("update", ["linear", "delta"])
@pytest.mark.parametrize("splits", [(3,), (5, 10), (1, 2, 14), (4, 13, 13, 29), (36,)])
def test_prefill_carries_state_across_unaligned_chunks(update, splits):
    layer = _layer(segment_len=5, update=update)
    x = _x(37)
    with torch.no_grad():
        state, outs, start = layer.init_state(2), [], 0
        for end in (*splits, 37):
            y, state = layer.prefill(x[:, start:end], state)
            outs.append(y)
            start = end
        assert torch.allclose(torch.cat(outs, 1), layer(x), atol=1e-5)


def test_state_size_is_constant_across_segment_counts():
    seg = 4
    layer = _layer(segment_len=seg)
    sizes = []
    with torch.no_grad():
        for n_segments in (3, 30):
            state = layer.init_state(1)
            _, state = layer.prefill(_x(n_segments * seg, batch=1), state)
            assert state.n_local == 0 and state.mem.shape == (1, H, DH, DH)
            sizes.append(layer.state_size_bytes(state))
            assert sizes[-1] == layer.expected_state_bytes(1, n_segments * seg, torch.float32)
    assert sizes[0] == sizes[1] == 2 * H * seg * DH * 4 + H * (DH * DH + DH) * 4
    # mid-segment too: the buffer is reused, never grows past segment_len
    assert layer.expected_state_bytes(1, 10**7 + 1, torch.float32) == sizes[0]


# --- the memory rules ----------------------------------------------------------------------------------

def _kv(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 1, n, 6, generator=g), torch.randn(1, 1, n, 5, generator=g)


def test_delta_rule_leaves_memory_unchanged_when_rewriting_a_stored_pair():
    k, v = _kv(1)
    empty_m, empty_z = torch.zeros(1, 1, 6, 5), torch.zeros(1, 1, 6)
    mem, z = memory_write(feature_map(k), v, empty_m, empty_z, "linear")
    # One stored pair is retrieved exactly: σ(k)σ(k)ᵀv / σ(k)σ(k)ᵀ = v.
    assert torch.allclose(memory_read(feature_map(k), mem, z), v, atol=1e-5)
    mem_delta, _ = memory_write(feature_map(k), v, mem, z, "delta")
    mem_linear, _ = memory_write(feature_map(k), v, mem, z, "linear")
    assert torch.allclose(mem_delta, mem, atol=1e-5)
    assert torch.allclose(mem_linear, 2 * mem, atol=1e-5)  # the linear rule writes it again


def test_delta_rule_writes_only_what_memory_does_not_return():
    k, v = _kv(7, seed=1)
    mem, z = memory_write(feature_map(k), v, torch.zeros(1, 1, 6, 5), torch.zeros(1, 1, 6), "linear")
    k_new, _ = _kv(3, seed=2)
    already = memory_read(feature_map(k_new), mem, z)  # what memory returns for the new keys
    mem_after, z_after = memory_write(feature_map(k_new), already, mem, z, "delta")
    assert torch.allclose(mem_after, mem, atol=1e-5)
    assert torch.allclose(z_after, z + feature_map(k_new).sum(2))  # z counts keys either way


def test_empty_memory_reads_zero_and_both_rules_write_the_same_first_segment():
    k, v = _kv(4)
    m0, z0 = torch.zeros(1, 1, 6, 5), torch.zeros(1, 1, 6)
    assert torch.equal(memory_read(feature_map(k), m0, z0), torch.zeros(1, 1, 4, 5))
    lin = memory_write(feature_map(k), v, m0, z0, "linear")
    delta = memory_write(feature_map(k), v, m0, z0, "delta")
    assert torch.equal(lin[0], delta[0]) and torch.equal(lin[1], delta[1])


# --- options and errors ----------------------------------------------------------------------------------

def test_registered_model_defaults_and_gradients_reach_the_gate():
    model = create_arch("infini_attention", vocab_size=32, d_model=32, n_layers=1, segment_len=4)
    mixer = model.mixers[0]
    assert mixer.cfg.update == "linear" and mixer.cfg.pos_encoding == "rope"
    assert model.backends() == "fused"
    model(torch.randint(0, 32, (2, 9))).sum().backward()
    assert mixer.beta.grad is not None and mixer.beta.grad.abs().sum() > 0


@pytest.mark.parametrize("kw,err,match", [
    ({"segment_len": 0}, ValueError, "segment_len must be a positive integer"),
    ({"segment_len": -4}, ValueError, "segment_len must be a positive integer"),
    ({"segment_len": 2.5}, ValueError, "segment_len must be a positive integer"),
    ({"update": "sum"}, ValueError, r"unknown memory update 'sum'; choose one of \['linear', 'delta'\]"),
    ({"backend": "chunked"}, ValueError, "unknown backend 'chunked'"),
    ({"n_kv_heads": 2}, TypeError, r"unknown keyword\(s\) \['n_kv_heads'\]"),
])
def test_bad_options_are_clear_errors(kw, err, match):
    with pytest.raises(err, match=match):
        create_arch("infini_attention", vocab_size=16, d_model=16, n_layers=1, **kw)


def test_config_rejects_grouped_query_attention():
    with pytest.raises(ValueError, match="does not support grouped-query attention"):
        InfiniAttentionConfig(16, 4, n_kv_heads=2)


def test_memory_write_rejects_unknown_rule():
    k, v = _kv(1)
    with pytest.raises(ValueError, match="unknown memory update 'hebb'"):
        memory_write(feature_map(k), v, torch.zeros(1, 1, 6, 5), torch.zeros(1, 1, 6), "hebb")
