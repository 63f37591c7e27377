"""The small-head causal attention kernel (archs/_attention_cpu.c) against the explicit
softmax reference: output and the gradients of q, k and v, in float32 and float64, across
the kernel's cases (compile-time head widths 8 / 16 / 32 and a general one, lengths that
end inside a 16-key block and inside a 16-row block, one token, grouped-query heads); the
routing inside the ``fused`` backend; no future leakage; the fallback when no compiler works."""
from __future__ import annotations

import pytest
import torch

from archs import _native
from archs.attention import fused_cpu
from archs.attention.fused import attention_sdpa
from archs.attention.layer import Attention, AttentionConfig
from archs.attention.ref import attention_math

# Skip only where no C compiler exists: a kernel that fails to *build* here must fail the
# tests, not skip them.
pytestmark = pytest.mark.skipif(_native.compiler() is None, reason="no C compiler for the CPU kernels")
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-4), torch.float64: dict(atol=1e-12, rtol=1e-11)}


def qkv(batch, heads, kv_heads, seqlen, head_dim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(batch, heads, seqlen, head_dim)] + [(batch, kv_heads, seqlen, head_dim)] * 2
    return [(torch.randn(s, generator=g) * 1.5).to(dtype).requires_grad_() for s in shapes]


def reference(q, k, v):
    group = q.shape[1] // k.shape[1]
    return attention_math(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), causal=True)


def out_and_grads(fn, q, k, v):
    out = fn(q, k, v)
    g = torch.Generator().manual_seed(7)
    return [out, *torch.autograd.grad(out, (q, k, v), torch.randn(out.shape, generator=g, dtype=out.dtype))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("batch, heads, kv_heads, seqlen, head_dim", [
    (2, 4, 4, 37, 8),      # the 8-wide path; 37 keys end inside a block, rows inside a row block
    (1, 4, 2, 50, 16),     # grouped-query heads (2 query heads per K/V head), 16 wide
    (1, 2, 2, 33, 32),     # the 32-wide path
    (1, 3, 1, 17, 6),      # a general width, multi-query (one K/V head)
    (2, 2, 2, 1, 8),       # one token
    (1, 1, 1, 64, 4),      # whole blocks, exactly 4 row blocks
    (1, 2, 1, 300, 8),     # 19 key blocks: a fault that only appears a few hundred tokens in
])
def test_matches_the_softmax_reference(dtype, batch, heads, kv_heads, seqlen, head_dim):
    q, k, v = qkv(batch, heads, kv_heads, seqlen, head_dim, dtype)
    got = out_and_grads(fused_cpu.causal_attention_cpu, q, k, v)
    want = out_and_grads(reference, q, k, v)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("heads, kv_heads, seqlen, head_dim", [(4, 4, 37, 8), (4, 2, 21, 16), (2, 1, 18, 6)])
def test_rope_inside_the_kernel_matches_rotating_first(dtype, heads, kv_heads, seqlen, head_dim):
    """q and k rotated inside the kernel (and their gradients taken back through the
    rotation) = RotaryEmbedding applied first, then the softmax reference."""
    from archs.positional import RotaryEmbedding

    rope = RotaryEmbedding(head_dim, base=100.0)  # a small base: large angles by the last token
    pos = torch.arange(seqlen)
    q, k, v = qkv(2, heads, kv_heads, seqlen, head_dim, dtype, seed=3)
    got = out_and_grads(lambda *a: fused_cpu.causal_attention_cpu(*a, rope=rope.tables(pos, dtype)), q, k, v)
    want = out_and_grads(lambda q_, k_, v_: reference(rope(q_, pos), rope(k_, pos), v_), q, k, v)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m: f"{name}: {m}")


def test_strided_layouts_are_read_and_written_in_place():
    """The layer's layouts: q a (B, L, H, Dh) projection seen as (B, H, L, Dh), k and v halves
    of one (B, L, 2 Hkv Dh) projection. The output keeps q's layout (heads_merge is then a
    view) and every gradient matches the reference's."""
    g = torch.Generator().manual_seed(5)
    B, L, H, Hkv, D = 2, 23, 4, 2, 8
    qp = torch.randn(B, L, H * D, generator=g, dtype=torch.float64, requires_grad=True)
    kvp = torch.randn(B, L, 2 * Hkv * D, generator=g, dtype=torch.float64, requires_grad=True)

    def split(qp, kvp):
        k, v = kvp.chunk(2, dim=-1)
        return [t.view(B, L, n, D).transpose(1, 2) for t, n in ((qp, H), (k, Hkv), (v, Hkv))]

    out = fused_cpu.causal_attention_cpu(*split(qp, kvp))
    assert not out.is_contiguous() and out.transpose(1, 2).is_contiguous()
    gout = torch.randn(out.shape, generator=g, dtype=torch.float64)
    got = [out, *torch.autograd.grad(out, (qp, kvp), gout)]
    ref = reference(*split(qp, kvp))
    want = [ref, *torch.autograd.grad(ref, (qp, kvp), gout)]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_rope_tables_of_the_wrong_shape_are_refused():
    q, k, v = qkv(1, 2, 2, 10, 8, torch.float32)
    with pytest.raises(ValueError, match=r"rope tables must be \(L, Dh/2\) = \(10, 4\)"):
        fused_cpu.causal_attention_cpu(q, k, v, rope=(torch.ones(9, 4), torch.ones(9, 4)))


def test_scale_is_applied_and_large_scores_stay_finite():
    q, k, v = qkv(1, 2, 2, 40, 8, torch.float32)
    with torch.no_grad():
        q.mul_(30)  # scores of several hundred: the softmax must subtract each row's max
    got = out_and_grads(lambda *a: fused_cpu.causal_attention_cpu(*a, scale=0.7), q, k, v)
    want = out_and_grads(lambda *a: attention_math(*a, scale=0.7, causal=True), q, k, v)
    for a, b in zip(got, want):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)


def test_no_future_leakage():
    """Changing token t's keys and values changes no output before t and no gradient of an
    earlier query."""
    q, k, v = qkv(1, 2, 2, 45, 8, torch.float64)
    base = fused_cpu.causal_attention_cpu(q, k, v).detach()
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[:, :, 30:] += 5
    v2[:, :, 30:] -= 3
    moved = fused_cpu.causal_attention_cpu(q, k2, v2).detach()
    assert torch.equal(moved[:, :, :30], base[:, :, :30])
    assert not torch.allclose(moved[:, :, 30:], base[:, :, 30:])
    (dq,) = torch.autograd.grad(fused_cpu.causal_attention_cpu(q, k, v)[:, :, 20].sum(), q)
    assert dq[:, :, 21:].abs().max() == 0 and dq[:, :, 20].abs().max() > 0


def test_the_fused_backend_routes_small_heads_here_and_wide_ones_to_sdpa(monkeypatch):
    calls = []
    real = fused_cpu.causal_attention_cpu
    monkeypatch.setattr(fused_cpu, "causal_attention_cpu", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    for head_dim, routed in ((8, True), (16, False)):
        calls.clear()
        q, k, v = qkv(1, 2, 2, 20, head_dim, torch.float32)
        out = attention_sdpa(q, k, v)
        torch.testing.assert_close(out, reference(q, k, v), **TOL[torch.float32])
        assert bool(calls) is routed
    q, k, v = qkv(1, 2, 2, 20, 8, torch.float32)
    calls.clear()
    attention_sdpa(q, k, v, kernel="math")  # a forced SDPA kernel is honoured
    attention_sdpa(q, k, v, causal=False)   # not the kernel's case
    attention_sdpa(q.bfloat16(), k.bfloat16(), v.bfloat16())  # nor is bf16
    assert not calls


def test_flop_counting_sees_the_attention_it_counts():
    """Under FlopCounterMode the kernel (a ctypes call the mode cannot see) steps aside for
    SDPA, so a counted row holds the attention's FLOPs."""
    from harness.counters import count_flops

    q, k, v = qkv(1, 2, 2, 32, 8, torch.float32)
    counted = count_flops(lambda: attention_sdpa(q, k, v))
    assert counted.flops == 2 * 2 * 1 * 2 * 32 * 32 * 8  # QK^T and PV, full L x L (torch's formula)


def test_a_layer_with_small_heads_agrees_across_backends(monkeypatch):
    """A RoPE layer's fused backend hands q and k unrotated to the kernel, with the tables."""
    seen = []
    real = fused_cpu.causal_attention_cpu
    monkeypatch.setattr(fused_cpu, "causal_attention_cpu",
                        lambda *a, **kw: seen.append(kw.get("rope") is not None) or real(*a, **kw))
    torch.manual_seed(0)
    cfg = AttentionConfig(d_model=32, n_heads=4, pos_encoding="rope", backend="ref")
    ref = Attention(cfg)
    fused = Attention(AttentionConfig(d_model=32, n_heads=4, pos_encoding="rope", backend="fused"))
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 29, 32, requires_grad=True)
    outs = [layer(x) for layer in (ref, fused)]
    grads = [torch.autograd.grad(o.square().sum(), x)[0] for o in outs]
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-4, rtol=1e-4)
    assert seen == [True]


def test_without_a_compiler_sdpa_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("ARCHBENCH_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "/nonexistent-cc")
    monkeypatch.setattr(_native, "compiler", lambda: None)
    monkeypatch.setattr(_native, "_LOADED", {})
    assert not fused_cpu.kernel_available()
    q, k, v = qkv(1, 2, 2, 20, 8, torch.float32)
    torch.testing.assert_close(attention_sdpa(q, k, v), reference(q, k, v), **TOL[torch.float32])
    with pytest.raises(_native.NativeKernelUnavailable, match="no C compiler"):
        fused_cpu.causal_attention_cpu(q, k, v)


def test_wide_heads_are_refused_with_the_alternative():
    q, k, v = qkv(1, 1, 1, 4, fused_cpu.MAX_HEAD_DIM + 2, torch.float32)
    with pytest.raises(ValueError, match="attention_sdpa"):
        fused_cpu.causal_attention_cpu(q, k, v)
