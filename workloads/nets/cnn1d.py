"""1D CNN for vibration windows: wide first kernel (WDCNN-style), then small kernels."""

from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm1d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool1d(2),
    )


class VibrationCNN(nn.Module):
    """Wide first-layer kernel (64 taps, stride 8) acts as a learned filter bank; four 3-tap
    blocks follow; global average pooling makes it indifferent to the window length."""

    def __init__(self, num_classes: int = 4, width: int = 16, in_ch: int = 1) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _block(in_ch, w, 64, stride=8),
            _block(w, 2 * w, 3),
            _block(2 * w, 4 * w, 3),
            _block(4 * w, 4 * w, 3),
            _block(4 * w, 4 * w, 3),
        )
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Sequential(nn.Linear(4 * w, 4 * w), nn.ReLU(inplace=True),
                                  nn.Linear(4 * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.body(x)), 1))
