"""Recurrent baselines: the LSTM the Transformer replaced, so every plot shows where RNNs stand."""
from archs._registry import TAB20, register_arch
from archs.rnn.layer import LSTMMixer, lstm

register_arch("lstm", family="rnn", description="LSTM layers (torch.nn.LSTM, cuDNN on GPU) as the mixer",
              mixer=LSTMMixer, letter="R", color=TAB20[3], tiny=dict(d_model=32, n_layers=2))(lstm)

__all__ = ["LSTMMixer", "lstm"]
