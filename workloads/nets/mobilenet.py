"""MobileNetV2-style classifier: inverted residuals with depthwise 3x3 convs and ReLU6."""

from __future__ import annotations

import torch
from torch import nn


def _div8(v: float) -> int:
    return max(8, int(v + 4) // 8 * 8)


def _cbr(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hid = cin * expand
        layers = [] if expand == 1 else [_cbr(cin, hid, 1)]
        layers += [_cbr(hid, hid, 3, stride, groups=hid), _cbr(hid, cout, 1, act=False)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


# (expansion, channels, repeats, stride) as in MobileNetV2
V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
               (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int, width_mult: float = 1.0, last_channels: int = 1280,
                 dropout: float = 0.1) -> None:
        super().__init__()
        cin = _div8(32 * width_mult)
        layers = [_cbr(3, cin, 3, 2)]
        for t, c, n, s in V2_SETTINGS:
            cout = _div8(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        last = _div8(last_channels * max(1.0, width_mult))
        layers.append(_cbr(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
