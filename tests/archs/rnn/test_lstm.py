import pytest
import torch

from archs import create_arch
from archs.rnn import LSTMMixer


def test_mixer_is_a_torch_lstm_with_constant_state():
    mixer = LSTMMixer(8, hidden_size=12)
    x = torch.randn(2, 30, 8)
    ref, _ = mixer.lstm(x)
    assert torch.allclose(mixer.forward(x), mixer.out_proj(ref))
    state = mixer.init_state(2)
    _, state = mixer.prefill(x, state)
    assert mixer.state_size_bytes(state) == 2 * 2 * 12 * 4 == mixer.expected_state_bytes(2, 30, torch.float32)


def test_backend_is_the_fused_torch_kernel_on_every_device():
    # torch.nn.LSTM is the one (fused) path: cuDNN on a GPU, ATen's kernel on the CPU.
    mixer = LSTMMixer(8)
    assert mixer.resolved_backend("cpu") == "fused" == mixer.resolved_backend("cuda")
    assert "fused" in LSTMMixer.backends and create_arch("lstm", d_model=8).backends() == "fused"
    with pytest.raises(ValueError, match="unknown backend 'chunked'"):
        LSTMMixer(8, backend="chunked")


def test_bad_hidden_size():
    with pytest.raises(ValueError, match="hidden_size must be positive"):
        create_arch("lstm", d_model=8, hidden_size=-3)
