"""sensor-ae: process anomaly detection with an autoencoder over multivariate sensor windows.

A plant's 32 process sensors, 64 steps per window: a 1D-convolutional autoencoder (sensors
as channels, time halved into an 8-channel latent) is trained only on normal operation
(steady running and set-point changes; `workloads/data/process.py`) so it learns the plant's
correlation structure; windows it reconstructs badly are anomalous (sensor drift, spikes,
stuck sensors). The graph returns the reconstruction and the anomaly score (the worst
sensor's mean squared reconstruction error over the window: anomalies usually hit one or a
few sensors), so the scoring runs on the benchmarked device.
Trained at first use and cached. Task metric: AUROC of the score against the anomaly labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._common import input_rng, output
from .base import Arrival, DataSource, Workload, register

# anomalous fraction per split: train on normal operation only
ANOMALY_RATE = {"train": 0.0, "calibration": 0.0, "test": 0.5}


@register
@dataclass(frozen=True)
class SensorAE(Workload):
    """Process anomaly detection: [64 steps, 32 sensors] -> reconstruction [B, 64, 32] and
    anomaly score [B]. 1D-conv autoencoder (64/32 hidden channels, 8-channel latent at half
    the time resolution).
    Trained at first use on normal data (train=False: seeded, untrained)."""
    arrival = Arrival(10.0, 100.0, 99.0, "plant historian pushing 10 windows/s (32 sensors); alarm within one period (100 ms)")

    name = "sensor-ae"
    scenario = ("Process-plant monitoring: flag anomalous 64-step windows of 32 sensors (drift, "
                "spikes, stuck sensors) by autoencoder reconstruction error")
    version = "1"
    input_names = ("sensors",)
    output_names = ("reconstruction", "score")
    task_metric = "auroc"
    higher_is_better = True
    split_sizes = {"train": 2048, "calibration": 256, "test": 1024}

    steps: int = 64
    channels: int = 32
    hidden: int = 32
    latent: int = 8
    train: bool = True
    epochs: int = 15

    def __post_init__(self) -> None:
        if self.steps % 2:
            raise ValueError("steps must be even (the encoder halves the time axis)")

    def _model(self) -> Any:
        from .nets.autoencoder import WindowAutoencoder
        from .training import deterministic

        with deterministic(self.seed):
            return WindowAutoencoder(self.channels, self.hidden, self.latent).eval()

    def build(self) -> Any:
        if not self.train:
            return self._model()
        from .training import train_cached

        import torch.nn.functional as F

        def train_data():
            x, _ = self.dataset("train")  # normal operation only; the target is the input
            return [x["sensors"]], x["sensors"]

        return train_cached(self, self._model(), lambda out, x: F.mse_loss(out[0], x),
                            epochs=self.epochs, lr=2e-3, train_data=train_data,
                            recipe_version="mse-recon")

    def make_inputs(self, batch: int, seed: int) -> dict[str, np.ndarray]:
        from .data import process

        x, _ = process.anomalies(input_rng(seed, self.name), batch, self.steps, self.channels,
                                 self.seed, ANOMALY_RATE["test"])
        return {"sensors": x}

    def data_source(self) -> DataSource:
        from .data import process

        def block(rng: np.random.Generator, n: int, split: str):
            x, y = process.anomalies(rng, n, self.steps, self.channels, self.seed,
                                     ANOMALY_RATE[split])
            return {"sensors": x}, y

        return DataSource(process.NAME + "-anomalies", process.VERSION,
                          {"steps": self.steps, "channels": self.channels,
                           "anomaly_rate": ANOMALY_RATE}, self.seed, block)

    def metric(self, outputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
        """AUROC of the graph's anomaly score against the labels (1 = anomalous window)."""
        from .metrics import auroc

        return auroc(output(outputs, "score"), labels)
