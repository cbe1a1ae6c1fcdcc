"""vibration-cnn1d: rolling-bearing fault diagnosis from housing-accelerometer windows.

Condition monitoring on rotating machinery (pumps, fans, motors, spindles): an accelerometer on
the bearing housing samples at 12 kHz; each 2048-sample window (~0.17 s, several shaft turns)
is classified as normal, outer-race fault, inner-race fault or ball fault. The model is a
WDCNN-style 1D CNN (a 64-tap stride-8 first layer acting as a learned filter bank, then small
kernels and global average pooling), trained at first use on the workload's own generator
(impulse trains at the bearing defect frequencies ringing a structural resonance; see
`workloads/data/vibration.py`) and cached. Task metric: top-1 accuracy on the test split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._common import input_rng, output
from .base import Arrival, DataSource, Workload, register

CLASSES = ("normal", "outer_race", "inner_race", "ball")


@register
@dataclass(frozen=True)
class VibrationCNN1D(Workload):
    """Bearing fault diagnosis: 1x2048 vibration window -> 4 logits (normal, outer race,
    inner race, ball). Trained at first use (train=False: seeded, untrained)."""
    # One accelerometer delivers 10 windows/s; an edge gateway of a machine hall serves 64 of
    # them, so the model sees their union: 640 windows/s, each judged within its sensor's period.
    arrival = Arrival(640.0, 100.0, 99.0, "condition-monitoring gateway for 64 accelerometers, each delivering "
                      "10 windows/s (overlapping 2048-sample windows at 12 kHz); verdict within one window "
                      "period (100 ms)")

    name = "vibration-cnn1d"
    scenario = ("Rotating-machinery condition monitoring: classify 2048-sample bearing-housing "
                "vibration windows (12 kHz) as normal / outer-race / inner-race / ball fault")
    version = "1"
    input_names = ("signal",)
    output_names = ("logits",)
    task_metric = "accuracy"
    higher_is_better = True
    split_sizes = {"train": 2048, "calibration": 256, "test": 1024}

    window: int = 2048
    width: int = 16
    train: bool = True
    epochs: int = 8

    def _model(self) -> Any:
        from .nets.cnn1d import VibrationCNN
        from .training import deterministic

        with deterministic(self.seed):
            return VibrationCNN(len(CLASSES), self.width).eval()

    def build(self) -> Any:
        if not self.train:
            from .training import seeded_calibrated

            return seeded_calibrated(self, self._model())
        import torch.nn.functional as F

        from .training import train_cached

        return train_cached(self, self._model(), F.cross_entropy, epochs=self.epochs, lr=3e-3)

    def make_inputs(self, batch: int, seed: int) -> dict[str, np.ndarray]:
        from .data import vibration

        x, _ = vibration.generate(input_rng(seed, self.name), batch, self.window)
        return {"signal": x}

    def data_source(self) -> DataSource:
        from .data import vibration

        def block(rng: np.random.Generator, n: int, split: str):
            x, y = vibration.generate(rng, n, self.window)
            return {"signal": x}, y

        return DataSource(vibration.NAME, vibration.VERSION, {"window": self.window},
                          self.seed, block)

    def metric(self, outputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
        from .metrics import accuracy

        return accuracy(output(outputs, "logits"), labels)
