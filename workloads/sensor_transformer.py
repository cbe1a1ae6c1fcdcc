"""sensor-transformer: process-state classification from multivariate sensor sequences.

A plant historian streams 64 process sensors (temperatures, pressures, flows); every 128-step
window is classified into the process state the control room cares about: steady operation,
set-point change, control-loop oscillation, valve stiction, or fouling (a sensor group
drifting off the plant's correlation structure). The model is a pre-norm transformer encoder
with explicit attention (MatMul + Softmax, so ONNX opset 17 and TVM Relax take it without a
fused attention op), trained at first use on the workload's own generator (latent-factor
plant, `workloads/data/process.py`) and cached. Task metric: top-1 accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._common import input_rng, output
from .base import Arrival, DataSource, Workload, register

STATES = ("steady", "setpoint_change", "oscillation", "stiction", "fouling")


@register
@dataclass(frozen=True)
class SensorTransformer(Workload):
    """Process-state classification: [128 steps, 64 sensors] -> 5 logits, transformer encoder
    (d_model 64, 3 layers, 4 heads by default). Trained at first use (train=False: seeded)."""
    arrival = Arrival(5.0, 200.0, 99.0, "control-room state classification at 5 windows/s; within one period (200 ms)")

    name = "sensor-transformer"
    scenario = ("Process-plant historian: classify 128-step windows of 64 correlated sensors as "
                "steady / set-point change / loop oscillation / valve stiction / fouling")
    version = "1"
    input_names = ("sensors",)
    output_names = ("logits",)
    task_metric = "accuracy"
    higher_is_better = True
    split_sizes = {"train": 1536, "calibration": 256, "test": 1024}

    steps: int = 128
    channels: int = 64
    d_model: int = 64
    layers: int = 3
    heads: int = 4
    train: bool = True
    epochs: int = 8

    def _model(self) -> Any:
        from .nets.transformer import SensorTransformer as Net
        from .training import deterministic

        with deterministic(self.seed):
            return Net(self.steps, self.channels, self.d_model, self.layers, self.heads,
                       len(STATES)).eval()

    def build(self) -> Any:
        if not self.train:
            return self._model()
        import torch.nn.functional as F

        from .training import train_cached

        return train_cached(self, self._model(), F.cross_entropy, epochs=self.epochs, lr=2e-3)

    def make_inputs(self, batch: int, seed: int) -> dict[str, np.ndarray]:
        from .data import process

        x, _ = process.states(input_rng(seed, self.name), batch, self.steps, self.channels,
                              self.seed)
        return {"sensors": x}

    def data_source(self) -> DataSource:
        from .data import process

        def block(rng: np.random.Generator, n: int, split: str):
            x, y = process.states(rng, n, self.steps, self.channels, self.seed)
            return {"sensors": x}, y

        return DataSource(process.NAME + "-states", process.VERSION,
                          {"steps": self.steps, "channels": self.channels}, self.seed, block)

    def metric(self, outputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
        from .metrics import accuracy

        return accuracy(output(outputs, "logits"), labels)
