"""The encoder-decoder shell: step == prefill == parallel forward (the separator inside a
chunk too), the cross-attention cache computed once, the encoder bidirectional and the
decoder causal, and clear errors for inputs and combinations it cannot take."""
from __future__ import annotations

import pytest
import torch

from archs import create_arch
from archs._scan_cpu import cpu_kernel_available
from archs.seq2seq import EncoderDecoderLM

VOCAB, SEP = 20, 19
PAIRS = [("transformer", "transformer"), ("mamba", "mamba"), ("lstm", "mamba2"),
         ("linear_attention", "transformer_alibi"), ("mamba2", "lstm")]


def _model(encoder="transformer", decoder="transformer", seed=0, **kw) -> EncoderDecoderLM:
    torch.manual_seed(seed)
    return create_arch("encoder_decoder", vocab_size=VOCAB, d_model=32, n_layers=2, encoder=encoder,
                       decoder=decoder, **kw).eval()


def _sequence(source_len=7, target_len=9, batch=3, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, SEP, (batch, source_len), generator=g)
    tgt = torch.randint(0, SEP, (batch, target_len), generator=g)
    return torch.cat([src, torch.full((batch, 1), SEP), tgt], dim=1)


def _steps(model, x):
    state, out = model.init_state(x.shape[0]), []
    for t in range(x.shape[1]):
        logits, state = model.step(x[:, t], state)
        out.append(logits)
    return torch.stack(out, dim=1), state


@pytest.mark.parametrize("encoder,decoder", PAIRS)
def test_step_and_prefill_match_the_parallel_forward(encoder, decoder):
    model, x = _model(encoder, decoder), _sequence()
    with torch.no_grad():
        parallel = model(x)
        stepped, _ = _steps(model, x)
        torch.testing.assert_close(stepped, parallel, atol=1e-5, rtol=1e-4)
        for cuts in ([3, 8], [8], [7, 9, 12], [1]):  # the separator (column 7) inside a chunk, at a start, ...
            state, outs, start = model.init_state(3), [], 0
            for end in [*cuts, x.shape[1]]:
                logits, state = model.prefill(x[:, start:end], state)
                outs.append(logits)
                start = end
            torch.testing.assert_close(torch.cat(outs, dim=1), parallel, atol=1e-5, rtol=1e-4)


def test_source_positions_predict_nothing_and_the_decoder_is_causal():
    model, x = _model(), _sequence()
    with torch.no_grad():
        out = model(x)
        assert torch.equal(out[:, :7], torch.zeros_like(out[:, :7]))
        later = x.clone()
        later[:, 12:] = (later[:, 12:] + 1) % SEP
        torch.testing.assert_close(model(later)[:, :12], out[:, :12])  # targets after 11 unseen before
        earlier_source = x.clone()
        earlier_source[:, 6] = (x[:, 6] + 1) % SEP  # the last source token...
        assert (model(earlier_source)[:, 7] - out[:, 7]).abs().max() > 1e-6  # ...reaches the first prediction


def test_the_encoder_is_bidirectional():
    model = _model("mamba", "transformer")
    assert not any(b.mixer.causal for b in model.encoder_blocks)
    h = torch.randn(1, 6, 32)
    changed = h.clone()
    changed[:, -1] += 1.0
    first = [cache.k[:, :, 0] for cache in model._encode(h)]
    moved = [cache.k[:, :, 0] for cache in model._encode(changed)]
    assert all((a - b).abs().max() > 1e-6 for a, b in zip(first, moved))  # position 0 saw position 5


def test_cross_attention_keys_and_values_are_computed_once():
    model, x = _model("mamba", "mamba"), _sequence()
    calls = []
    for mixer in model.cross_mixers:
        mixer.kv_proj.register_forward_hook(lambda _m, inp, _out: calls.append(inp[0].shape[1]))
    with torch.no_grad():
        _, state = _steps(model, x)
    assert calls == [7] * len(model.cross_mixers)  # once per layer, over the 7 source tokens
    assert state.source is None and all(c.k.shape[2] == 7 for c in state.layers[1::2])
    held = model.state_size_bytes(state)
    assert held == model.expected_state_bytes(3, x.shape[1], source_len=7)


def test_parameters_are_shared_where_t5_shares_them():
    model = _model()
    assert model.head.weight is model.embed.weight
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    assert not any("encoder_embed" in n for n in sizes)
    assert model.num_params() == sum(sizes.values())


def test_analytic_flops_count_what_runs():
    from harness.counters import count_flops
    model = _model(decoder="transformer")
    x = model.benchmark_tokens(1, 32, torch.Generator().manual_seed(0))
    assert int((x == SEP).sum()) == 1 and int((x[0] == SEP).nonzero()) == 16  # the benchmark's half
    with torch.no_grad():
        counted = count_flops(lambda: model(x)).flops
    # the counter charges the decoder's causal self-attention for all T x T pairs, the
    # closed form (FlashAttention's accounting) for the T(T+1)/2 it uses: exactly that apart
    target, layers = 16, 2
    triangle = layers * 2 * 2 * 32 * (target * target - target * (target + 1) // 2)
    assert counted - model.analytic_flops(1, 32) == triangle


# --- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("tokens,match", [
    (torch.zeros(2, 9, dtype=torch.long), r"separator \(token 19\).*\[None, None\]"),
    (torch.tensor([[1, 19, 2, 3], [1, 2, 19, 3]]), r"first separator of each row is at \[1, 2\]"),
    (torch.tensor([[19, 1, 2, 3]]), "the source is empty"),
])
def test_inputs_without_a_common_separator_are_clear_errors(tokens, match):
    with pytest.raises(ValueError, match=match):
        _model()(tokens)


def test_rows_reaching_the_separator_at_different_steps_are_refused():
    model = _model()
    state = model.init_state(2)
    _, state = model.step(torch.tensor([1, 2]), state)
    with pytest.raises(ValueError, match="different steps"):
        model.step(torch.tensor([SEP, 3]), state)


@pytest.mark.parametrize("kw,match", [
    ({"causal": False}, "causal=False does not apply"),
    ({"encoder": "sliding_window"}, "cannot run bidirectionally"),
    ({"decoder": "encoder_decoder"}, "single-stack"),
    ({"separator": 20}, "not a token id"),
    ({"encoder_kwargs": {"n_head": 2}}, r"unknown keyword\(s\) \['n_head'\]"),
])
def test_bad_combinations_are_clear_errors(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _model(**kw)


def test_encoder_and_decoder_depths_and_families_are_recorded():
    model = _model("mamba", "transformer", encoder_layers=3)
    assert len(model.encoder_blocks) == 3 and len(model.decoder_blocks) == 4
    # the Mamba encoder runs the CPU scan kernel where it builds (then both sides say "fused")
    assert model.backends("cpu", 64) == ("fused" if cpu_kernel_available() else "chunked+fused")
    assert model.arch_kwargs["encoder"] == "mamba" and model.arch_kwargs["encoder_layers"] == 3
