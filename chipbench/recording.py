"""The measured part of a record (latency, throughput, accuracy, verdict), importable without
torch, ONNX or TVM: the bundle runner builds its records with it on a machine that has only
numpy and a backend's runtime. `chipbench.cell` builds the same fields for in-process cells.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
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
    `gate`) and the verdict (INVALID when any gate fails), as RunRecord keyword arguments.
    ValueError when there are no samples or an output is missing or misshapen."""
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
    """`chipbench.machine.machine_info()` where psutil is installed; on a bare runtime machine
    (no psutil) the same keys from the OS itself (/proc/meminfo, the affinity mask)."""
    from chipbench.machine import cpuinfo, machine_info, usable_cores

    try:
        return dict(machine_info())
    except ImportError:
        pass
    cpu = cpuinfo()
    flags = set((cpu.get("flags") or cpu.get("Features") or "").split())
    from chipbench.machine import _ISA_FLAGS, _gpus

    return {
        "hostname": platform.node(),
        "cpu_model": cpu.get("model name") or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "cores": usable_cores(),
        "physical_cores": None,
        "isa": [f for f in _ISA_FLAGS if f in flags],
        "memory_gib": _meminfo_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "gpus": _gpus(),
    }


def _meminfo_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / 2**30, 1)
    except (OSError, ValueError, IndexError):
        pass
    pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return round(pages * size / 2**30, 1)
