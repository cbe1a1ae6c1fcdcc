"""1D-convolutional autoencoder over a sensor window that also emits its anomaly score (the
worst sensor's mean squared reconstruction error over the window), so the scoring is part of
the benchmarked graph.

The encoder mixes sensors and neighbouring steps and halves the time axis into a narrow
latent (a few channels per step: the plant's few hidden drivers); the decoder maps back. Normal
windows, which follow the plant's correlation structure, reconstruct well; drifts, spikes and
stuck sensors break it and do not."""

from __future__ import annotations

import torch
from torch import nn


class WindowAutoencoder(nn.Module):
    def __init__(self, channels: int, hidden: int, latent: int) -> None:
        super().__init__()
        h = hidden
        self.encoder = nn.Sequential(
            nn.Conv1d(channels, 2 * h, 5, padding=2), nn.ReLU(),
            nn.Conv1d(2 * h, h, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv1d(h, latent, 3, padding=1),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose1d(latent, h, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(h, 2 * h, 5, padding=2), nn.ReLU(),
            nn.Conv1d(2 * h, channels, 5, padding=2),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = x.transpose(1, 2)  # [B, steps, channels] -> [B, channels, steps]
        rec = self.decoder(self.encoder(z)).transpose(1, 2)
        # an anomaly usually hits one or a few sensors: score the worst-reconstructed sensor
        score = ((rec - x) ** 2).mean(dim=1).amax(dim=1)
        return rec, score
