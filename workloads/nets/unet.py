"""Small U-Net for per-pixel segmentation (conv-BN-ReLU pairs, max-pool down, transposed-conv
up, skip concatenation)."""

from __future__ import annotations

import torch
from torch import nn


def _double(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    def __init__(self, num_classes: int, base: int = 16, depth: int = 3, in_ch: int = 3) -> None:
        super().__init__()
        chans = [base * 2**i for i in range(depth + 1)]
        self.downs = nn.ModuleList()
        cin = in_ch
        for c in chans[:-1]:
            self.downs.append(_double(cin, c))
            cin = c
        self.pool = nn.MaxPool2d(2)
        self.bottom = _double(chans[-2], chans[-1])
        self.ups = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        for c_hi, c_lo in zip(reversed(chans[1:]), reversed(chans[:-1])):
            self.ups.append(nn.ConvTranspose2d(c_hi, c_lo, 2, stride=2))
            self.up_convs.append(_double(2 * c_lo, c_lo))
        self.head = nn.Conv2d(chans[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, conv, skip in zip(self.ups, self.up_convs, reversed(skips)):
            x = conv(torch.cat([up(x), skip], dim=1))
        return self.head(x)
