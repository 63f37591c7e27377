"""The fixed-window feed-forward LM: the window is exactly the last n-1 inputs, the mixer
computes Bengio et al.'s hidden layer, and stacking widens the window as stated."""
from __future__ import annotations

import pytest
import torch

from archs import create_arch
from archs.ffn_lm import FFNLMConfig, FFNMixer
from archs.ffn_lm.ref import window_inputs, window_inputs_loop

G = torch.Generator().manual_seed(0)


def test_window_inputs_match_the_loop_and_keep_oldest_first():
    x, history = torch.randn(2, 9, 3, generator=G), torch.randn(2, 3, 3, generator=G)
    got = window_inputs(x, history)
    assert got.shape == (2, 9, 4 * 3)
    torch.testing.assert_close(got, window_inputs_loop(x, history))
    # position 0 sees the three history vectors, then itself; position 5 sees x_2 .. x_5
    torch.testing.assert_close(got[:, 0], torch.cat([history[:, 0], history[:, 1], history[:, 2], x[:, 0]], -1))
    torch.testing.assert_close(got[:, 5], x[:, 2:6].flatten(1))


def test_mixer_is_one_hidden_layer_over_the_window():
    torch.manual_seed(0)
    mixer = FFNMixer(FFNLMConfig(d_model=4, order=3, hidden=6))
    x = torch.randn(1, 5, 4, generator=G)
    y = mixer(x)
    t = 3
    concat = torch.cat([x[0, t - 1], x[0, t]])  # order 3: the last two inputs
    want = mixer.down.weight @ torch.tanh(mixer.up.weight @ concat + mixer.up.bias) + mixer.down.bias
    torch.testing.assert_close(y[0, t], want)
    first = torch.cat([torch.zeros(4), x[0, 0]])  # before the sequence: zeros
    torch.testing.assert_close(y[0, 0], mixer.down(torch.tanh(mixer.up(first))))


@pytest.mark.parametrize("n_layers", [1, 2])
@torch.no_grad()
def test_receptive_field_is_the_window_times_depth(n_layers):
    order, t = 4, 12
    torch.manual_seed(0)
    model = create_arch("ffn_lm", vocab_size=16, d_model=8, n_layers=n_layers, order=order)
    reach = n_layers * (order - 2)  # tokens before t that can still reach position t
    x = torch.randint(0, 16, (1, 16), generator=G)
    base = model(x)[0, t]

    def moved(pos: int) -> float:
        changed = x.clone()
        changed[0, pos] = (x[0, pos] + 1) % 16
        return float((model(changed)[0, t] - base).abs().max())

    assert moved(t - reach) > 1e-4          # the oldest input in reach changes the output
    assert moved(t - reach - 1) == 0.0       # one further back changes nothing


def test_state_is_the_last_order_minus_two_inputs_and_constant():
    model = create_arch("ffn_lm", vocab_size=16, d_model=8, n_layers=2, order=5)
    state = model.init_state(3)
    _, state = model.prefill(torch.randint(0, 16, (3, 40), generator=G), state)
    assert [s["history"].shape for s in state.layers] == [(3, 3, 8)] * 2
    assert model.state_size_bytes(state) == model.expected_state_bytes(3, 40) == model.expected_state_bytes(3, 4000) \
        == 2 * 3 * 3 * 8 * 4


@pytest.mark.parametrize("kw,match", [({"order": 1}, "order must be an integer >= 2"),
                                      ({"activation": "swish"}, "unknown activation"),
                                      ({"hidden": 0}, "hidden must be positive")])
def test_bad_settings_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        create_arch("ffn_lm", d_model=8, **kw)


def test_hybrid_letter_f_builds_the_window_mixer():
    model = create_arch("hybrid", vocab_size=16, d_model=16, pattern="FA", n_layers=2,
                        mixer_kwargs={"F": {"order": 3}, "A": {"n_heads": 2}})
    assert type(model.mixers[0]).__name__ == "FFNMixer" and model.mixers[0].cfg.window == 2
