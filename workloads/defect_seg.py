"""defect-seg: pixel-level defect segmentation of steel-strip surface images (small U-Net).

Where classification only flags a tile, segmentation outlines each defect so its size and
position can be measured (grading, repair or cut-out decisions). Input: 3x96x96 tile;
output: per-pixel logits over background + the five defect types (scratch, pit, inclusion,
crack, stain). A small U-Net (3 levels, 16 base channels: convs, max-pool, transposed convs,
skip concatenation) is trained at first use on the surface generator's masks and cached.
Task metric: mean IoU over the classes present (confusion accumulated over the split).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._common import input_rng, output
from .base import DataSource, Workload, register
from .defect_cnn import CLASSES  # mask value k = CLASSES[k]; 0 ("ok") = background


@register
@dataclass(frozen=True)
class DefectSeg(Workload):
    """Pixel-level defect segmentation: 3x96x96 -> 6x96x96 logits (small U-Net).
    Trained at first use (train=False gives the seeded, untrained net)."""

    name = "defect-seg"
    scenario = ("Steel-strip inspection: outline defects pixel by pixel (background, scratch, pit, "
                "inclusion, crack, stain) in 96x96 surface tiles to measure them (small U-Net)")
    version = "1"
    input_names = ("image",)
    output_names = ("logits",)
    task_metric = "mean_iou"
    higher_is_better = True
    split_sizes = {"train": 1024, "calibration": 128, "test": 384}

    image_size: int = 96
    base: int = 16
    depth: int = 3
    train: bool = True
    epochs: int = 8

    def _model(self) -> Any:
        from .nets.unet import UNet
        from .training import deterministic

        with deterministic(self.seed):
            return UNet(len(CLASSES), self.base, self.depth).eval()

    def build(self) -> Any:
        if not self.train:
            return self._model()
        import torch
        import torch.nn.functional as F

        from .training import cached_weights, deterministic, fit, predict

        # defects cover a few % of pixels: weight defect classes up so they are learnt
        weight = torch.tensor([0.2] + [1.0] * (len(CLASSES) - 1))

        def train(m):
            x, y = self.dataset("train")
            with deterministic(self.seed):
                info = fit(m, [x["image"]], y,
                           lambda out, t: F.cross_entropy(out, t, weight=weight),
                           epochs=self.epochs, batch_size=32, lr=3e-3, seed=self.seed)
            xt, yt = self.dataset("test")
            info["test_" + self.task_metric] = self.metric(
                {"logits": predict(m, [xt["image"]], 64)[0]}, yt)
            return info

        return cached_weights(self, "adamw-onecycle-v1", self._model(), train)

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
