"""The Workload contract: a reference model, its inputs, and how close a backend must stay.

A workload is a frozen dataclass whose fields are its shapes; `dataclasses.replace` gives a
smaller variant for tests, and the fields take part in every cache key.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """Fidelity gate against the FP32 torch reference on the same inputs."""

    max_abs: float
    rel_l2: float
    min_cosine: float


DEFAULT_TOLERANCES = {
    "fp32": Tolerance(max_abs=1e-3, rel_l2=1e-4, min_cosine=0.99999),
    "fp16": Tolerance(max_abs=5e-2, rel_l2=5e-3, min_cosine=0.9995),
    "bf16": Tolerance(max_abs=2e-1, rel_l2=3e-2, min_cosine=0.995),
    "int8": Tolerance(max_abs=float("inf"), rel_l2=0.25, min_cosine=0.97),
}


@dataclass(frozen=True)
class Workload:
    """Base class. Subclasses set the class attributes and implement `build` and `make_inputs`."""

    name: ClassVar[str]
    scenario: ClassVar[str]  # the industrial situation it stands for, one line
    version: ClassVar[str] = "1"
    input_names: ClassVar[tuple[str, ...]] = ("input",)
    output_names: ClassVar[tuple[str, ...]] = ("output",)
    task_metric: ClassVar[str | None] = None  # e.g. "accuracy", "rmse"; None = fidelity only
    tolerances: ClassVar[dict[str, Tolerance]] = DEFAULT_TOLERANCES

    seed: int = 0

    def build(self) -> Any:
        """The torch model in eval mode, weights seeded (or trained and cached)."""
        raise NotImplementedError

    def make_inputs(self, batch: int, seed: int) -> dict[str, np.ndarray]:
        """Seeded inputs of the model's dtype and shape for `batch` samples."""
        raise NotImplementedError

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """ONNX dynamic axes; batch is dynamic on every input and output by default."""
        return {n: {0: "batch"} for n in (*self.input_names, *self.output_names)}

    def tolerance(self, precision: str) -> Tolerance:
        return self.tolerances.get(precision, DEFAULT_TOLERANCES[precision])

    def key(self) -> dict[str, Any]:
        """Everything that defines this workload's model and inputs (for cache keys)."""
        return {"name": self.name, "version": self.version, **dataclasses.asdict(self)}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scenario": self.scenario,
            "task_metric": self.task_metric,
            "params": dataclasses.asdict(self),
        }


_MODULES = ("defect_cnn", "vibration", "sensor_transformer")
_REGISTRY: dict[str, type[Workload]] = {}


def register(cls: type[Workload]) -> type[Workload]:
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    if len(_REGISTRY) == 0:
        for mod in _MODULES:
            importlib.import_module(f"chipbench.workloads.{mod}")


def workload_names() -> list[str]:
    _load_all()
    return list(_REGISTRY)


def get_workload(name: str, **overrides: Any) -> Workload:
    _load_all()
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown workload '{name}' (known: {', '.join(_REGISTRY)})") from None
    return cls(**overrides)


__all__ = ["Tolerance", "Workload", "register", "get_workload", "workload_names"]
