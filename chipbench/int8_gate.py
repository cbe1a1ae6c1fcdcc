"""A cell's int8 accuracy gates as one check on any model's run function (what
chipbench.int8_search holds every configuration to): the same fidelity gate and task-metric
gate the cell itself judges its timed run by (chipbench.accuracy, chipbench.taskeval)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from chipbench.accuracy import Tolerance, check, fidelity

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True, eq=False)
class AccuracyGate:
    """A cell's accuracy gates as a check on any model's run function: fidelity of
    `run(inputs)` to the FP32 `reference` within `tolerance` (chipbench.accuracy), and, where
    the workload has a task metric, `task(run)` (chipbench.taskeval.task_accuracy's dict, whose
    "failures" fail the gate). `task_key` says what `task` measures (for cache keys)."""

    tolerance: Tolerance
    inputs: Arrays
    reference: Arrays
    task: Callable[[Callable[[Arrays], Arrays]], dict] | None = None
    task_key: dict | None = None

    def check(self, run: Callable[[Arrays], Arrays]) -> tuple[list[str], Any]:
        """(failures, Fidelity) of `run` against both gates; no failures means it passes."""
        failures, fid = self.check_fidelity(run)
        return (failures or self.check_task(run)), fid

    def check_fidelity(self, run: Callable[[Arrays], Arrays]) -> tuple[list[str], Any]:
        """(failures, Fidelity) of `run(inputs)` against the reference (one call)."""
        fid = fidelity(run(self.inputs), self.reference)
        return check(fid, self.tolerance), fid

    def check_task(self, run: Callable[[Arrays], Arrays]) -> list[str]:
        """The task metric's failures of `run` (none when the workload has no task metric)."""
        return list(self.task(run).get("failures", [])) if self.task is not None else []

    def key(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for arrays in (self.inputs, self.reference):
            for name in sorted(arrays):
                a = np.ascontiguousarray(arrays[name])
                digest.update(f"{name}:{a.dtype}:{a.shape}".encode())
                digest.update(a.tobytes())
        return {"tolerance": asdict(self.tolerance), "data": digest.hexdigest(), "task": self.task_key}


def accuracy_gate_for(prep, task_samples: int) -> AccuracyGate | None:
    """The int8 accuracy gate of a cell's preparation (chipbench.cell.Preparation): its
    tolerance, inputs and FP32 reference, and its workload's task metric on `task_samples`
    test samples (chipbench.taskeval, the same check the cell makes) where it has one. None
    unless the cell runs int8."""
    if prep.precision != "int8":
        return None
    task = task_key = None
    workload = prep.workload
    if workload is not None and workload.task_metric and task_samples > 0:
        from chipbench.taskeval import DEFAULT_GATE, task_accuracy

        def task(run):
            return task_accuracy(run, workload, prep.batch, task_samples)

        task_key = {"workload": workload.key(), "metric": workload.task_metric, "samples": task_samples,
                    "batch": prep.batch, "gate": getattr(workload, "task_gate", DEFAULT_GATE)}
    return AccuracyGate(prep.tolerance, prep.prepared.inputs, prep.prepared.reference, task, task_key)
