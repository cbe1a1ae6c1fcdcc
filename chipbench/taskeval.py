"""Task accuracy: the backend's task metric on the workload's test split, against FP32 torch's.

Both are computed on the same samples, fed at the cell's batch size (the compiled model's
static shape). The gate: metric ≥ 99 % of the reference (for lower-is-better metrics such as
RMSE, the reference ≥ 99 % of the metric), per workload configurable via `task_gate`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import numpy as np

from chipbench.backends.base import Arrays
from chipbench.paths import atomic_write_text, cache_dir

DEFAULT_GATE = 0.99


def _chunks(inputs: Arrays, batch: int, n: int):
    for start in range(0, n - batch + 1, batch):
        yield {k: v[start:start + batch] for k, v in inputs.items()}


def _eval(run: Callable[[Arrays], Arrays], workload, batch: int, n: int) -> tuple[float, int]:
    inputs, labels = workload.dataset("test", n)
    n_used = (min(n, len(labels)) // batch) * batch
    if n_used == 0:
        raise ValueError(f"test split has fewer samples than one batch of {batch}")
    outs: dict[str, list[np.ndarray]] = {}
    for chunk in _chunks(inputs, batch, n_used):
        for name, value in run(chunk).items():
            outs.setdefault(name, []).append(np.asarray(value))
    merged = {k: np.concatenate(v) for k, v in outs.items()}
    return float(workload.metric(merged, labels[:n_used])), n_used


def reference_metric(workload, batch: int, n: int) -> tuple[float, int]:
    """FP32 torch's task metric on the same samples (cached with its exact key)."""
    from chipbench.prepare import export_key, reference_outputs

    key = {**export_key(workload, batch), "n": n, "task_metric": workload.task_metric}
    text = json.dumps(key, sort_keys=True, default=str)
    path = cache_dir("task-reference", hashlib.sha256(text.encode()).hexdigest()[:24]) / "metric.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved["key"] == json.loads(text):
            return saved["value"], saved["n"]
    model = workload.build().eval()
    value, n_used = _eval(lambda chunk: reference_outputs(workload, chunk, model), workload, batch, n)
    atomic_write_text(path, json.dumps({"key": json.loads(text), "value": value, "n": n_used}))
    return value, n_used


def task_accuracy(run: Callable[[Arrays], Arrays], workload, batch: int, n: int) -> dict:
    """The backend's metric, the reference's, and whether the gate holds."""
    value, n_used = _eval(run, workload, batch, n)
    reference, _ = reference_metric(workload, batch, n)
    gate = getattr(workload, "task_gate", DEFAULT_GATE)
    higher = workload.higher_is_better
    ratio = (value / reference if higher else reference / value) if value and reference else (1.0 if value == reference else 0.0)
    failures = [] if ratio >= gate else [
        f"{workload.task_metric} {value:.4g} vs FP32 {reference:.4g} "
        f"({ratio:.1%} of reference, gate {gate:.0%})"]
    return {"metric": workload.task_metric, "value": value, "reference": reference, "ratio": ratio,
            "gate": gate, "higher_is_better": higher, "samples": n_used, "failures": failures}


def calibration_for(workload, batch: int, batches: int = 8) -> tuple[Callable[[], list[Arrays]], dict]:
    """Calibration batches from the workload's calibration split; a workload without data
    (fidelity only) is calibrated on its own seeded inputs, and the key says so."""
    n = batch * batches
    if workload.task_metric is None:
        def synthetic() -> list[Arrays]:
            return [workload.make_inputs(batch, seed=10_000 + i) for i in range(batches)]

        return synthetic, {"workload": workload.key(), "split": "synthetic", "n": n, "batch": batch}

    def load() -> list[Arrays]:
        inputs, _ = workload.dataset("calibration", n)
        return list(_chunks(inputs, batch, min(n, len(next(iter(inputs.values()))))))

    return load, {"workload": workload.key(), "split": "calibration", "n": n, "batch": batch}
