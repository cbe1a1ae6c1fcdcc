"""defect-cnn: surface-defect classification on a steel-strip line camera (ResNet-50 style).

A line-scan camera images rolled steel strip; each 224x224 tile is classified as ok or as one
of five defect types (scratch, pit, inclusion, crack, stain) so the line can flag or reject
the coil. This is the large comparability model of the catalogue: a ResNet-50 layout
(bottleneck blocks [3, 4, 6, 3], ~23.5 M parameters, ~4.1 GMAC at 224x224) with seeded
weights, whose BatchNorm statistics are set from the workload's own surface images so that
activations and folded BN constants look like a trained network's. It is not trained
(training a ResNet-50 on 2 CPU cores is out of reach), so it is fidelity-only; the trained
top-1 accuracy on the same surface data is reported by `edge-inspect`. `dataset()` still
serves labelled surface tiles (the same generator) for realistic inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._common import input_rng
from .base import Arrival, DataSource, Workload, register

CLASSES = ("ok", "scratch", "pit", "inclusion", "crack", "stain")


def surface_source(seed: int, image_size: int) -> DataSource:
    from .data import surface

    def block(rng: np.random.Generator, n: int, split: str):
        x, y, _ = surface.generate(rng, n, image_size)
        return {"image": x}, y

    return DataSource(surface.NAME + "-cls", surface.VERSION, {"size": image_size}, seed, block)


@register
@dataclass(frozen=True)
class DefectCNN(Workload):
    """Surface-defect classification on a line camera: ResNet-50-style, 3x224x224 -> 6 logits.

    Fidelity only (seeded weights, BN statistics calibrated on generated surface tiles)."""
    arrival = Arrival(30.0, 33.0, 99.0, "line-scan camera at 30 frames/s; a tile must be judged within one frame period (33 ms) so the reject gate keeps pace")

    name = "defect-cnn"
    scenario = ("Steel-strip line camera: classify each 224x224 surface tile as ok / scratch / "
                "pit / inclusion / crack / stain (ResNet-50-style CNN, fidelity only)")
    version = "1"
    input_names = ("image",)
    output_names = ("logits",)
    split_sizes = {"train": 512, "calibration": 64, "test": 256}

    image_size: int = 224
    width: int = 64
    blocks: tuple[int, ...] = (3, 4, 6, 3)
    num_classes: int = len(CLASSES)

    def seeded_model(self) -> Any:
        """ResNet-50 layout with torch's seeded initialisation (Kaiming-normal convs), before
        its BatchNorm statistics are calibrated."""
        from .nets.resnet import ResNet
        from .training import deterministic

        with deterministic(self.seed):
            return ResNet(tuple(self.blocks), self.width, self.num_classes).eval()

    def build(self) -> Any:
        import torch

        from .training import cached_weights, calibrate_batchnorm, deterministic

        model = self.seeded_model()

        def calib(m):
            x, _ = self.dataset("calibration", 32)
            with deterministic(self.seed):
                calibrate_batchnorm(m, [torch.from_numpy(x["image"][i:i + 8])
                                        for i in range(0, 32, 8)])
            return {"bn_calibration_images": 32}

        return cached_weights(self, "bn-calib-v1", model, calib)

    def make_inputs(self, batch: int, seed: int) -> dict[str, np.ndarray]:
        from .data import surface

        x, _, _ = surface.generate(input_rng(seed, self.name), batch, self.image_size)
        return {"image": x}

    def data_source(self) -> DataSource:
        return surface_source(self.seed, self.image_size)
