"""Dense autoencoder over a sensor window that also emits its anomaly score (mean squared
reconstruction error per window), so the score is part of the benchmarked graph."""

from __future__ import annotations

import torch
from torch import nn


class WindowAutoencoder(nn.Module):
    def __init__(self, steps: int, channels: int, hidden: tuple[int, ...], latent: int) -> None:
        super().__init__()
        dims = [steps * channels, *hidden, latent]
        enc, dec = [], []
        for a, b in zip(dims[:-1], dims[1:]):
            enc += [nn.Linear(a, b), nn.ReLU()]
        enc.pop()  # linear bottleneck
        rdims = dims[::-1]
        for a, b in zip(rdims[:-1], rdims[1:]):
            dec += [nn.Linear(a, b), nn.ReLU()]
        dec.pop()
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)
        self.steps, self.channels = steps, channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = torch.flatten(x, 1)
        rec = self.decoder(self.encoder(flat))
        score = ((rec - flat) ** 2).mean(dim=1)
        return rec.reshape(-1, self.steps, self.channels), score
