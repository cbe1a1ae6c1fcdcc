"""edge-inspect: on-device surface inspection with a MobileNetV2-style network.

The same steel-strip inspection as `defect-cnn`, but run on a smart camera or an embedded
accelerator beside the line: 64x64 tiles, MobileNetV2-style network (inverted residuals,
depthwise-separable 3x3 convs, ReLU6; width multiplier 0.5). It is trained at first use on the
workload's own surface generator (`workloads/data/surface.py`) and cached, so it carries the
catalogue's trained top-1 accuracy for surface-defect classification (ok, scratch, pit,
inclusion, crack, stain). Depthwise convolutions are the operator class that stresses chips
and compilers here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._common import input_rng, output
from .base import Arrival, DataSource, Workload, register
from .defect_cnn import CLASSES, surface_source


@register
@dataclass(frozen=True)
class EdgeInspect(Workload):
    """On-device inspection: 3x64x64 surface tile -> 6 logits, MobileNetV2-style (width 0.5).
    Trained at first use (train=False: seeded, untrained)."""
    arrival = Arrival(30.0, 33.0, 99.0, "smart camera at 30 frames/s; verdict within one frame period (33 ms)")

    name = "edge-inspect"
    scenario = ("Smart camera at the strip line: classify 64x64 surface tiles ok / scratch / pit / "
                "inclusion / crack / stain on the device (MobileNetV2-style, depthwise convs)")
    version = "1"
    input_names = ("image",)
    output_names = ("logits",)
    task_metric = "accuracy"
    higher_is_better = True
    split_sizes = {"train": 3072, "calibration": 256, "test": 768}

    image_size: int = 64
    width_mult: float = 0.5
    last_channels: int = 1280
    train: bool = True
    epochs: int = 6

    def _model(self) -> Any:
        from .nets.mobilenet import MobileNetV2
        from .training import deterministic

        with deterministic(self.seed):
            return MobileNetV2(len(CLASSES), self.width_mult, self.last_channels).eval()

    def build(self) -> Any:
        if not self.train:
            from .training import seeded_calibrated

            return seeded_calibrated(self, self._model())
        import torch.nn.functional as F

        from .training import train_cached

        return train_cached(self, self._model(), F.cross_entropy, epochs=self.epochs, lr=4e-3)

    def make_inputs(self, batch: int, seed: int) -> dict[str, np.ndarray]:
        from .data import surface

        x, _, _ = surface.generate(input_rng(seed, self.name), batch, self.image_size)
        return {"image": x}

    def data_source(self) -> DataSource:
        return surface_source(self.seed, self.image_size)

    def metric(self, outputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
        from .metrics import accuracy

        return accuracy(output(outputs, "logits"), labels)
