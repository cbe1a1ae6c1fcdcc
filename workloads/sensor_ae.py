"""sensor-ae: process anomaly detection with an autoencoder over multivariate sensor windows.

A plant's 32 process sensors, 64 steps per window: the autoencoder is trained only on normal
operation (steady running and set-point changes; `workloads/data/process.py`) so it learns the
plant's correlation structure; windows it reconstructs badly are anomalous (sensor drift,
spikes, stuck sensors). The graph returns the reconstruction and the anomaly score (mean
squared reconstruction error per window), so the scoring runs on the benchmarked device.
Trained at first use and cached. Task metric: AUROC of the score against the anomaly labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._common import input_rng, output
from .base import DataSource, Workload, register

# anomalous fraction per split: train on normal operation only
ANOMALY_RATE = {"train": 0.0, "calibration": 0.0, "test": 0.5}


@register
@dataclass(frozen=True)
class SensorAE(Workload):
    """Process anomaly detection: [64 steps, 32 sensors] -> reconstruction [B, 64, 32] and
    anomaly score [B]. Dense autoencoder 2048-512-128-32-128-512-2048.
    Trained at first use on normal data (train=False gives the seeded, untrained net)."""

    name = "sensor-ae"
    scenario = ("Process-plant monitoring: flag anomalous 64-step windows of 32 sensors (drift, "
                "spikes, stuck sensors) by autoencoder reconstruction error")
    version = "1"
    input_names = ("sensors",)
    output_names = ("reconstruction", "score")
    task_metric = "auroc"
    higher_is_better = True
    split_sizes = {"train": 4096, "calibration": 256, "test": 1024}

    steps: int = 64
    channels: int = 32
    hidden: tuple[int, ...] = (512, 128)
    latent: int = 32
    train: bool = True
    epochs: int = 30

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {"sensors": {0: "batch"}, "reconstruction": {0: "batch"}, "score": {0: "batch"}}

    def _model(self) -> Any:
        from .nets.autoencoder import WindowAutoencoder
        from .training import deterministic

        with deterministic(self.seed):
            return WindowAutoencoder(self.steps, self.channels, tuple(self.hidden),
                                     self.latent).eval()

    def build(self) -> Any:
        if not self.train:
            return self._model()
        from .training import cached_weights, deterministic, fit, predict

        def train(m):
            x, _ = self.dataset("train")
            xs = x["sensors"]
            with deterministic(self.seed):
                info = fit(m, [xs], np.zeros(len(xs), np.float32),
                           lambda out, _t: out[1].mean(), epochs=self.epochs,
                           batch_size=64, lr=2e-3, seed=self.seed)
            xt, yt = self.dataset("test")
            rec, score = predict(m, [xt["sensors"]])
            info["test_" + self.task_metric] = self.metric({"score": score}, yt)
            return info

        return cached_weights(self, "adamw-onecycle-v1", self._model(), train)

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
        """AUROC of the graph's anomaly score (per-window mean squared reconstruction error)
        against the labels (1 = anomalous window)."""
        from .metrics import auroc

        return auroc(output(outputs, "score"), labels)
