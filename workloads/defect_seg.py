"""defect-seg: pixel-level defect segmentation of steel-strip surface images (small U-Net).

Where classification only flags a tile, segmentation outlines each defect so its size and
position can be measured (grading, repair or cut-out decisions). Input: 3x128x128 tile;
output: per-pixel logits over background + the five defect types (scratch, pit, inclusion,
crack, stain). A small U-Net (3 levels, 16 base channels: convs, max-pool, transposed convs,
skip concatenation) is trained at first use on 48x48 patches of the surface generator's
images and masks (it is fully convolutional) and cached.
Task metric: mean IoU over the classes present (confusion accumulated over the split).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._common import input_rng, output
from .base import Arrival, DataSource, Workload, register
from .defect_cnn import CLASSES  # mask value k = CLASSES[k]; 0 ("ok") = background


@register
@dataclass(frozen=True)
class DefectSeg(Workload):
    """Pixel-level defect segmentation: 3x128x128 -> 6x128x128 logits (small U-Net).
    Trained at first use (train=False: seeded, untrained)."""
    arrival = Arrival(10.0, 100.0, 99.0, "defect measurement on flagged tiles, about 10 a second; within one period (100 ms)")

    name = "defect-seg"
    scenario = ("Steel-strip inspection: outline defects pixel by pixel (background, scratch, pit, "
                "inclusion, crack, stain) in 128x128 surface tiles to measure them (small U-Net)")
    version = "1"
    input_names = ("image",)
    output_names = ("logits",)
    task_metric = "mean_iou"
    higher_is_better = True
    split_sizes = {"train": 1024, "calibration": 128, "test": 256}

    image_size: int = 128
    base: int = 16
    depth: int = 3
    train: bool = True
    epochs: int = 8
    crop: int = 48  # training patch size

    def _model(self) -> Any:
        from .nets.unet import UNet
        from .training import deterministic

        with deterministic(self.seed):
            return UNet(len(CLASSES), self.base, self.depth).eval()

    def build(self) -> Any:
        if not self.train:
            from .training import seeded_calibrated

            return seeded_calibrated(self, self._model())
        import torch
        import torch.nn.functional as F

        from .training import train_cached

        # defects cover a few % of pixels: weight the defect classes up so they are learnt
        weight = torch.tensor([0.2] + [1.0] * (len(CLASSES) - 1))
        return train_cached(self, self._model(),
                            lambda out, t: F.cross_entropy(out, t, weight=weight),
                            epochs=self.epochs, lr=3e-3, batch_size=32,
                            train_data=self._train_crops, recipe_version=f"crop{self.crop}")

    def _train_crops(self) -> tuple[list[np.ndarray], np.ndarray]:
        """Patch training (the net is fully convolutional): one `crop`-sized patch per train
        image, centred near its defect with jitter (anywhere on defect-free images)."""
        x, m = self.dataset("train")
        c, s = min(self.crop, self.image_size), self.image_size
        rng = np.random.default_rng([self.seed, 4242])
        xs = np.empty((len(x["image"]), 3, c, c), np.float32)
        ms = np.empty((len(m), c, c), np.int64)
        for i in range(len(m)):
            pts = np.argwhere(m[i] > 0)
            if len(pts):
                cy, cx = pts[rng.integers(len(pts))] + rng.integers(-c // 4, c // 4 + 1, 2)
            else:
                cy, cx = rng.integers(0, s, 2)
            y0 = int(np.clip(cy - c // 2, 0, s - c))
            x0 = int(np.clip(cx - c // 2, 0, s - c))
            xs[i] = x["image"][i, :, y0:y0 + c, x0:x0 + c]
            ms[i] = m[i, y0:y0 + c, x0:x0 + c]
        return [xs], ms

    def make_inputs(self, batch: int, seed: int) -> dict[str, np.ndarray]:
        from .data import surface

        x, _, _ = surface.generate(input_rng(seed, self.name), batch, self.image_size)
        return {"image": x}

    def data_source(self) -> DataSource:
        from .data import surface

        size = self.image_size

        def block(rng: np.random.Generator, n: int, split: str):
            x, _, masks = surface.generate(rng, n, size)
            return {"image": x}, masks

        return DataSource(surface.NAME + "-seg", surface.VERSION, {"size": size}, self.seed, block)

    def metric(self, outputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
        from .metrics import mean_iou

        return mean_iou(output(outputs, "logits").argmax(axis=1), labels, len(CLASSES))
