"""Dense attention: the math and SDPA paths agree; KV-cache decoding; GQA."""
import math

import pytest
import torch

from archs import create_arch
from archs.attention import Attention, AttentionConfig, KVCache
from archs.attention.fused import attention_sdpa
from archs.attention.ref import attention_math, causal_mask


def _qkv(b=2, h=4, hkv=4, lq=9, lk=9, d=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float32).to(dtype).requires_grad_()
    return mk(b, h, lq, d), mk(b, hkv, lk, d), mk(b, hkv, lk, d)


def test_math_is_textbook_softmax_attention():
    q, k, v = _qkv(b=1, h=1, hkv=1, lq=4, lk=4, d=3)
    out = attention_math(q, k, v)
    # row 2 by hand: softmax over keys 0..2 only
    s = (q[0, 0, 2] @ k[0, 0, :3].T) / math.sqrt(3)
    expected = s.softmax(-1) @ v[0, 0, :3]
    assert torch.allclose(out[0, 0, 2], expected, atol=1e-6)
    assert torch.allclose(out[0, 0, 0], v[0, 0, 0], atol=1e-6)  # first token sees only itself


@pytest.mark.parametrize("hkv", [4, 2, 1])
@pytest.mark.parametrize("lq,lk", [(9, 9), (1, 9), (4, 9)])
@pytest.mark.parametrize("alibi", [False, True])
def test_sdpa_matches_math_outputs_and_gradients(hkv, lq, lk, alibi):
    from archs.positional import ALiBi
    q, k, v = _qkv(hkv=hkv, lq=lq, lk=lk)
    bias = ALiBi(4)(torch.arange(lk - lq, lk), torch.arange(lk)) if alibi else None
    a = attention_math(q, k, v, bias=bias)
    grads_a = torch.autograd.grad(a.square().sum(), (q, k, v))
    b = attention_sdpa(q, k, v, bias=bias)
    grads_b = torch.autograd.grad(b.square().sum(), (q, k, v))
    assert torch.allclose(a, b, atol=1e-5)
    for ga, gb in zip(grads_a, grads_b):
        assert torch.allclose(ga, gb, atol=1e-4)


def test_forced_sdpa_math_kernel_runs_and_bad_kernel_is_named():
    q, k, v = _qkv()
    assert torch.allclose(attention_sdpa(q, k, v, kernel="math"), attention_math(q, k, v), atol=1e-5)
    with pytest.raises(ValueError, match="unknown sdpa_backend 'flash3'"):
        attention_sdpa(q, k, v, kernel="flash3")


def test_bf16_inputs_supported():
    q, k, v = _qkv(dtype=torch.bfloat16)
    a, b = attention_math(q, k, v), attention_sdpa(q, k, v)
    assert a.dtype == b.dtype == torch.bfloat16
    assert torch.allclose(a.float(), b.float(), atol=3e-2)


def test_causal_mask_offsets_for_chunks():
    m = causal_mask(2, 5)
    assert m.tolist() == [[True, True, True, True, False], [True] * 5]


@pytest.mark.parametrize("pe", ["none", "rope", "alibi"])
@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_model_math_and_sdpa_backends_agree(pe, n_kv_heads):
    kw = dict(vocab_size=32, d_model=32, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, pos_encoding=pe)
    torch.manual_seed(1)
    a = create_arch("transformer", backend="ref", **kw)
    torch.manual_seed(1)
    b = create_arch("transformer", backend="fused", **kw)
    x = torch.randint(0, 32, (2, 17))
    assert a.backends() == "ref" and b.backends() == "fused"
    assert torch.allclose(a(x), b(x), atol=1e-5)


def test_kv_cache_grows_by_doubling_and_counts_logical_bytes():
    cache = KVCache.empty(2, 3, 4, dtype=torch.float32)
    for n in range(1, 40):
        cache.append(torch.ones(2, 3, 1, 4) * n, torch.zeros(2, 3, 1, 4))
        assert cache.nbytes() == 2 * 2 * 3 * n * 4 * 4
    assert cache.k.shape[2] == 64  # 16 -> 32 -> 64, not one allocation per token
    assert cache.k[0, 0, :39, 0].tolist() == [float(i) for i in range(1, 40)]


def test_gqa_shrinks_the_cache():
    full = Attention(AttentionConfig(32, n_heads=4))
    gqa = Attention(AttentionConfig(32, n_heads=4, n_kv_heads=1))
    assert gqa.expected_state_bytes(1, 100, torch.float32) * 4 == full.expected_state_bytes(1, 100, torch.float32)


def test_flash_attn_backend_is_explicit_and_fails_clearly_without_cuda():
    from archs import BackendUnavailableError
    model = create_arch("transformer", vocab_size=16, d_model=16, n_layers=1, n_heads=2, backend="flash_attn")
    with pytest.raises(BackendUnavailableError, match="flash"):
        model.backends("cpu")
    with pytest.raises(BackendUnavailableError, match="flash"):
        model(torch.zeros(1, 4, dtype=torch.long))
    assert create_arch("transformer", vocab_size=16, d_model=16, n_layers=1, n_heads=2).backends("cuda") == "fused"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sdpa_on_gpu_matches_math_reference(dtype):
    q, k, v = (t.detach().cuda().to(dtype).requires_grad_() for t in _qkv(lq=64, lk=64, d=64))
    a = attention_math(q, k, v)
    b = attention_sdpa(q, k, v)
    assert torch.allclose(a.float(), b.float(), atol=2e-2)
    ga = torch.autograd.grad(a.float().square().sum(), (q, k, v))
    gb = torch.autograd.grad(b.float().square().sum(), (q, k, v))
    for x, y in zip(ga, gb):
        assert torch.allclose(x.float(), y.float(), atol=5e-2, rtol=5e-2)
