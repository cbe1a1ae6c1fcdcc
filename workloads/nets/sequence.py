"""Sequence regressors for remaining useful life: a GRU and a temporal convolutional net.

Both map [batch, window, features] to RUL in cycles ([batch, 1]); the head predicts RUL / cap
and the graph multiplies by the cap, so outputs are in cycles."""

from __future__ import annotations

import torch
from torch import nn


class GRURegressor(nn.Module):
    """Stacked GRU (exported as ONNX GRU ops), last step's hidden state, MLP head."""

    def __init__(self, features: int, hidden: int, layers: int, scale: float) -> None:
        super().__init__()
        self.gru = nn.GRU(features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.gru(x)
        return self.head(y[:, -1]) * self.scale


class _TemporalBlock(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, dilation: int) -> None:
        super().__init__()
        # causal: pad both ends inside the conv (static pads) and chop the future end
        self.pad = (k - 1) * dilation
        self.conv1 = nn.Conv1d(cin, cout, k, dilation=dilation, padding=self.pad)
        self.conv2 = nn.Conv1d(cout, cout, k, dilation=dilation, padding=self.pad)
        self.relu = nn.ReLU()
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv1(x)[:, :, : -self.pad])
        y = self.relu(self.conv2(y)[:, :, : -self.pad])
        return self.relu(y + self.skip(x))


class TCNRegressor(nn.Module):
    """Causal dilated residual conv blocks (dilations 1, 2, 4, ...), last step, linear head."""

    def __init__(self, features: int, channels: int, levels: int, kernel: int,
                 scale: float) -> None:
        super().__init__()
        blocks, cin = [], features
        for i in range(levels):
            blocks.append(_TemporalBlock(cin, channels, kernel, 2**i))
            cin = channels
        self.net = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, 1)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x.transpose(1, 2))  # [B, C, T]
        return self.head(y[:, :, -1]) * self.scale
