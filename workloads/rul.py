"""rul-gru and rul-tcn: remaining-useful-life estimation from multivariate sensor windows.

Predictive maintenance of a fleet (turbofans, pumps, compressors): every cycle each unit
reports two operating settings and fourteen sensors; from the last 30 cycles the model
estimates how many cycles remain before failure, so maintenance is scheduled just in time.
Data follow NASA C-MAPSS (`workloads/data/degradation.py`: exponential wear past a per-unit
onset, operating-condition shifts, noise; labels capped at 125 cycles). Two models stand for
the two usual families: a stacked GRU (exported as ONNX GRU ops; TVM's Relax ONNX importer
has no GRU converter, which must surface as an unsupported operator) and a temporal
convolutional network (causal dilated convolutions). Both are trained at first use and
cached. Task metric: RMSE in cycles (lower is better).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._common import input_rng, output
from .base import Arrival, DataSource, Workload, register


@dataclass(frozen=True)
class _RUL(Workload):
    arrival = Arrival(10.0, 100.0, 99.0, "fleet gateway scoring 10 engine-cycle windows a second; within one period (100 ms)")
    input_names = ("sensors",)
    output_names = ("rul",)
    task_metric = "rmse"
    higher_is_better = False
    split_sizes = {"train": 6144, "calibration": 256, "test": 1024}

    window: int = 30
    sensors: int = 14
    train: bool = True
    epochs: int = 6

    def _net(self) -> Any:
        raise NotImplementedError

    def _model(self) -> Any:
        from .training import deterministic

        with deterministic(self.seed):
            return self._net().eval()

    def build(self) -> Any:
        if not self.train:
            return self._model()
        import torch.nn.functional as F

        from .data.degradation import RUL_CAP
        from .training import train_cached

        # regress RUL / cap (unit scale); the graph multiplies back to cycles
        return train_cached(self, self._model(),
                            lambda out, y: F.mse_loss(out[:, 0] / RUL_CAP, y / RUL_CAP),
                            epochs=self.epochs, lr=3e-3)

    def make_inputs(self, batch: int, seed: int) -> dict[str, np.ndarray]:
        from .data import degradation

        x, _ = degradation.generate(input_rng(seed, self.name), batch, self.window,
                                    self.sensors, self.seed)
        return {"sensors": x}

    def data_source(self) -> DataSource:
        from .data import degradation

        def block(rng: np.random.Generator, n: int, split: str):
            x, y = degradation.generate(rng, n, self.window, self.sensors, self.seed)
            return {"sensors": x}, y

        return DataSource(degradation.NAME, degradation.VERSION,
                          {"window": self.window, "sensors": self.sensors}, self.seed, block)

    def metric(self, outputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
        from .metrics import rmse

        return rmse(output(outputs, "rul"), labels)


@register
@dataclass(frozen=True)
class RulGRU(_RUL):
    """Remaining useful life: [30 cycles, 2 settings + 14 sensors] -> RUL in cycles [B, 1],
    2-layer GRU (hidden 64). Trained at first use (train=False: seeded, untrained)."""

    name = "rul-gru"
    scenario = ("Fleet predictive maintenance: estimate remaining useful life (cycles) from the last "
                "30 cycles of 14 sensors + 2 operating settings (stacked GRU)")
    version = "1"

    hidden: int = 64
    layers: int = 2

    def _net(self) -> Any:
        from .data.degradation import OP_SETTINGS, RUL_CAP
        from .nets.sequence import GRURegressor

        return GRURegressor(OP_SETTINGS + self.sensors, self.hidden, self.layers, RUL_CAP)


@register
@dataclass(frozen=True)
class RulTCN(_RUL):
    """Remaining useful life, convolutional: same data as rul-gru, temporal conv net (causal
    dilated residual blocks, 64 channels, dilations 1-2-4-8, kernel 3; receptive field 61
    cycles). Trained at first use (train=False: seeded, untrained)."""

    name = "rul-tcn"
    scenario = ("Fleet predictive maintenance: estimate remaining useful life (cycles) from the last "
                "30 cycles of 14 sensors + 2 operating settings (temporal conv net)")
    version = "1"

    channels: int = 64
    levels: int = 4
    kernel: int = 3

    def _net(self) -> Any:
        from .data.degradation import OP_SETTINGS, RUL_CAP
        from .nets.sequence import TCNRegressor

        return TCNRegressor(OP_SETTINGS + self.sensors, self.channels, self.levels, self.kernel,
                            RUL_CAP)
