"""The report's first screen: per workload, the fastest stack whose result is VALID, its speed-up
over the reference stack with a confidence interval, and whether it is accurate.

"Fastest" is the lowest median per-query latency among VALID single-stream records of the
workload at batch 1 on one device (any precision: a precision is a deployment choice, and the
accuracy gates already held it to the FP32 reference). The speed-up is the reference stack's
median / the best stack's median (> 1: faster than the reference) with the 95 % bootstrap
interval of `chipbench.compare.speedup` from both records' raw samples. The reference stack is
ONNX Runtime on the CPU at fp32 unless the caller names another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from chipbench.compare import Speedup, speedup
from chipbench.record import RunRecord

REFERENCE_STACK = ("ort-cpu", "fp32")  # (backend, precision) the speed-ups are against
SUMMARY_SCENARIO = "single-stream"


@dataclass(frozen=True)
class SummaryRow:
    """One workload on the first screen. `best` is None when no record of it is VALID;
    `speedup` is None when the reference stack was not measured VALID or NOISY beside it, and
    has no interval when either record kept no raw samples (then the stored medians' ratio)."""

    workload: str
    device: str
    best: RunRecord | None
    reference: RunRecord | None
    speedup: Speedup | None
    stacks_valid: int
    stacks_tried: int
    records: tuple[RunRecord, ...] = ()  # every single-stream batch-1 record of the workload on the device

    @property
    def stack(self) -> str:
        return "none VALID" if self.best is None else f"{self.best.backend['name']} {self.best.precision}"

    @property
    def accuracy(self) -> str:
        """What the best stack's accuracy gates said: the task metric against FP32's where the
        workload has one, else the fidelity to the FP32 outputs."""
        if self.best is None or self.best.accuracy is None:
            return "–"
        task = self.best.accuracy.task
        if task:
            return f"{task['metric']} {task['value']:.4g} (FP32 {task['reference']:.4g}): passes"
        return f"rel L2 {self.best.accuracy.fidelity.rel_l2:.2g} to FP32: passes"


def summary_rows(records: list[RunRecord], samples_of: Callable[[RunRecord], np.ndarray | None],
                 reference: tuple[str, str] = REFERENCE_STACK) -> list[SummaryRow]:
    """A SummaryRow per (workload, device) that has single-stream batch-1 records, in the order
    the workloads first appear. `samples_of(rec)` gives a record's raw latencies (seconds) or
    None."""
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for rec in records:
        if rec.kind == "run" and rec.scenario.get("name") == SUMMARY_SCENARIO and rec.batch == 1 and rec.latency \
                and rec.status == "ok" and not rec.generation and rec.workload.get("kind") != "kernel":
            groups.setdefault((rec.workload["name"], rec.device_label), []).append(rec)
    rows = []
    for (workload, device), recs in groups.items():
        valid = [r for r in recs if r.verdict == "VALID"]
        best = min(valid, key=lambda r: r.latency.median, default=None)
        # the reference may be NOISY (measured on a busy machine): the speed-up then says so
        ref = next((r for r in recs if (r.backend["name"], r.precision) == reference
                    and r.verdict in ("VALID", "NOISY")), None)
        rows.append(SummaryRow(workload, device, best, ref, _speedup(ref, best, samples_of),
                               len({(r.backend["name"], r.precision) for r in valid}),
                               len({(r.backend["name"], r.precision) for r in recs}), tuple(recs)))
    return rows


def _speedup(ref: RunRecord | None, best: RunRecord | None,
             samples_of: Callable[[RunRecord], np.ndarray | None]) -> Speedup | None:
    if ref is None or best is None:
        return None
    if ref.id == best.id:
        return Speedup(1.0, 1.0, 1.0)
    a, b = samples_of(ref), samples_of(best)
    if a is None or b is None:
        return Speedup(ref.latency.median / best.latency.median)
    return speedup(a, b, seed=0)
