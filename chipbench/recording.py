"""The measured part of a record (latency, throughput, accuracy, verdict), importable without
torch, ONNX or TVM: the bundle runner builds its records with it on a machine that has only
numpy and a backend's runtime. `chipbench.cell` builds the same fields for in-process cells.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from chipbench.accuracy import check, fidelity
from chipbench.stats import LatencyStats


@dataclass(frozen=True)
class Gate:
    """Fidelity tolerance as `chipbench.accuracy.check` reads it (the workload's per-precision
    `Tolerance`, carried in a bundle's manifest as a dict)."""

    max_abs: float
    rel_l2: float
    min_cosine: float

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Gate:
        """None (JSON's stand-in for an unbounded tolerance) becomes +inf / -inf."""
        def bound(key, unbounded):
            value = data.get(key)
            return unbounded if value is None else float(value)

        return cls(bound("max_abs", float("inf")), bound("rel_l2", float("inf")), bound("min_cosine", float("-inf")))


def finite(value: Any) -> Any:
    """JSON has no inf/nan: an unbounded tolerance or a diverged output is written as null."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(x) for k, x in value.items()}
    return value


def measured_fields(samples_s: list[float], batch: int, outputs: Mapping[str, np.ndarray],
                    reference: Mapping[str, np.ndarray], gate: Gate, tolerance: Mapping[str, Any],
                    seed: int = 0) -> dict[str, Any]:
    """latency (ms statistics of `samples_s`, seconds per query), throughput (batch × queries /
    summed query seconds, samples/s), accuracy (fidelity of `outputs` to `reference` against
    `gate`: an output missing or misshapen fails it) and the verdict (INVALID when any gate
    fails), as RunRecord keyword arguments. ValueError when there are no samples."""
    fid = fidelity(outputs, reference)
    failures = check(fid, gate)
    stats = LatencyStats.from_samples(samples_s, seed=seed)
    return {
        "latency": stats.to_dict(),
        "throughput": {"value": batch * len(samples_s) / float(np.sum(samples_s)), "unit": "samples/s"},
        "accuracy": finite({"fidelity": fid.to_dict(), "tolerance": dict(tolerance), "failures": failures,
                            "task": None}),
        "verdict": "INVALID" if failures else "VALID",
        "reason": "; ".join(failures) or None,
    }


def this_machine() -> dict[str, Any]:
    """The machine the runner runs on (`chipbench.machine.machine_info`, psutil or not)."""
    from chipbench.machine import machine_info

    return dict(machine_info())
