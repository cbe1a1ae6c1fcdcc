"""The measured parts of a RunRecord as value objects with their units.

`rec.latency` is a `chipbench.stats.LatencyStats` (milliseconds); the others live here:
`Throughput` (samples/s or tokens/s), `Accuracy` (fidelity to the FP32 reference, the gate it
was held to, the task metric), `CompileCost` (seconds, bytes) and `Resources` (bytes, seconds,
cores). A record is JSON at the store boundary (chipbench/schema/run_record.schema.json):
each part's `from_dict` reads that form, schema 1 or 2, and `to_dict` writes it, so nothing
else in chipbench handles a record's parts as dictionaries.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from chipbench.accuracy import Fidelity
from chipbench.resources import CpuUse

THROUGHPUT_UNITS = ("samples/s", "tokens/s")


def finite(value: Any) -> Any:
    """JSON has no inf/nan: an unbounded tolerance or a diverged output is written as null."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(x) for k, x in value.items()}
    return value


@dataclass(frozen=True)
class Throughput:
    """Work done per second of summed query time: `value` in `unit`, samples/s (the batch that
    ran × queries / seconds) or tokens/s (output tokens, generation). ValueError for another
    unit or a negative value."""

    value: float
    unit: str = "samples/s"

    def __post_init__(self) -> None:
        if self.unit not in THROUGHPUT_UNITS:
            raise ValueError(f"throughput unit {self.unit!r}: one of {', '.join(THROUGHPUT_UNITS)}")
        if not self.value >= 0:
            raise ValueError(f"throughput {self.value} {self.unit}: not a non-negative number")

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "unit": self.unit}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Throughput:
        return cls(float(data["value"]), data.get("unit", "samples/s"))


@dataclass(frozen=True)
class Accuracy:
    """How far a cell's outputs were from the FP32 reference (`fidelity`: max_abs and rel_l2
    in the outputs' own unit and relative, cosine), the gate they were held to (`tolerance`,
    None where unbounded), why they failed it (`failures`, one line each, task metric's
    included) and the task metric's result (`task`: metric, value, reference, gate; None where
    the workload has none)."""

    fidelity: Fidelity
    tolerance: dict[str, float | None] = field(default_factory=dict)
    failures: tuple[str, ...] = ()
    task: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return finite({"fidelity": self.fidelity.to_dict(), "tolerance": dict(self.tolerance),
                       "failures": list(self.failures), "task": self.task})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Accuracy:
        """A stored accuracy part; fidelity figures that JSON kept as null (a non-finite error) stay None."""
        fid = data.get("fidelity") or {}
        known = {f.name for f in fields(Fidelity)}
        fidelity = Fidelity(**{k: (tuple(v) if k == "problems" else v) for k, v in fid.items() if k in known})
        return cls(fidelity, dict(data.get("tolerance") or {}), tuple(data.get("failures") or ()), data.get("task"))


@dataclass(frozen=True)
class CompileCost:
    """What building the model cost: `seconds` of compiling as the backend counts it (None where
    it does not say) and `artifact_bytes`, the size of what it built (None where nothing is
    written). Other figures a backend reports stay in `extra`."""

    seconds: float | None = None
    artifact_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "artifact_bytes": self.artifact_bytes, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompileCost:
        extra = {k: v for k, v in data.items() if k not in ("seconds", "artifact_bytes")}
        return cls(data.get("seconds"), data.get("artifact_bytes"), extra)


@dataclass(frozen=True)
class Resources:
    """What a cell cost the machine (definitions in chipbench.resources): `peak_rss_bytes`,
    `cpu` (CPU seconds over wall seconds, over the usable cores), `load_s` and
    `first_inference_s` (cold start, seconds), `threads` (requested / set by the backend /
    running), `affinity` (CPUs), `device_memory` (bytes, on a GPU), `machine_load` (other
    processes' CPU at the start and end). Other figures stay in `extra`."""

    peak_rss_bytes: int | None = None
    cpu: CpuUse | None = None
    load_s: float | None = None
    first_inference_s: float | None = None
    threads: dict[str, Any] | None = None
    affinity: dict[str, Any] | None = None
    device_memory: dict[str, Any] | None = None
    machine_load: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("cpu", "extra")}
        return {**d, "cpu": self.cpu.to_dict() if self.cpu else None, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Resources:
        known = {f.name for f in fields(cls)} - {"extra"}
        d = {k: v for k, v in data.items() if k in known}
        cpu = d.pop("cpu", None)
        if cpu:
            d["cpu"] = CpuUse(float(cpu["cpu_s"]), float(cpu["wall_s"]), int(cpu["cores"]))
        return cls(**d, extra={k: v for k, v in data.items() if k not in known})


def typed(cls: type, value: Any) -> Any:
    """`value` as `cls`: None and `cls` instances as they are, a stored dict through `cls.from_dict`."""
    if value is None or isinstance(value, cls):
        return value
    return cls.from_dict(value)


def plain(value: Any) -> Any:
    """A part as its JSON form (`to_dict`), None as None."""
    return None if value is None else value.to_dict()
