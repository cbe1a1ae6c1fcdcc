"""Deployment requirements: what a production line asks of a stack, read from a TOML file.

A requirement file states one line's needs (every unit is in the field's name)::

    name = "camera-line"                  # optional; the file's stem otherwise
    description = "one line of prose"     # optional
    workload = "edge-inspect"             # a chipbench workload

    [arrival]
    pattern = "fixed"                     # fixed (constant interval: the fixed-rate scenario)
                                          # or poisson (Poisson arrivals: the Server scenario)
    rate_hz = 30.0                        # queries per second

    [latency]
    deadline_ms = 33.0                    # milliseconds, from arrival to answer (queueing included)
    percentile = "p99"                    # p90, p99 or p99.9

    [accuracy]                            # optional; at most one of the two
    percent_of_fp32 = 99.0                # the task metric as a share of the FP32 model's, in %
    # metric_floor = 0.95                 # or the task metric itself: a minimum where higher is
                                          # better, a maximum where lower is (RMSE)

    [budget]                              # optional, each field too
    cores = 2                             # threads the stack may use (and cores it may keep busy)
    memory_mib = 1024                     # peak resident memory of the serving process, MiB
    energy_j_per_inference = 0.05         # joules per inference; measured on CUDA devices only

`load_requirement(path)` parses a file into a frozen `Requirement`; anything wrong raises
RequirementError whose message names the file and the field ("requirements/x.toml: latency.
deadline_ms must be a number > 0, got 'fast'").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from chipbench.paths import read_toml

# The percentiles a deadline may be stated at: name -> (the record's tail name, percent).
PERCENTILES: dict[str, tuple[str, float]] = {"p90": ("p90", 90.0), "p99": ("p99", 99.0), "p99.9": ("p999", 99.9)}
# Arrival patterns -> the chipbench scenario that produces them.
PATTERNS: dict[str, str] = {"fixed": "fixed-rate", "poisson": "server"}

_KEYS: dict[str, tuple[str, ...]] = {
    "": ("name", "description", "workload", "arrival", "latency", "accuracy", "budget"),
    "arrival": ("pattern", "rate_hz"),
    "latency": ("deadline_ms", "percentile"),
    "accuracy": ("percent_of_fp32", "metric_floor"),
    "budget": ("cores", "memory_mib", "energy_j_per_inference"),
}


class RequirementError(ValueError):
    """A requirement file that cannot be used; the message is one line naming the file and field."""


@dataclass(frozen=True)
class Requirement:
    """One production line's requirement (units in the field names).

    `pattern` "fixed" or "poisson" at `rate_hz` queries per second; the answer within
    `deadline_ms` milliseconds at the `percentile` ("p90", "p99" or "p99.9"); the task metric
    at least `percent_of_fp32` % of the FP32 model's, or past `metric_floor` (in the metric's own
    unit and direction); at most `cores` threads, `memory_mib` MiB of peak resident memory and
    `energy_j_per_inference` joules an inference. None: not required."""

    name: str
    workload: str
    pattern: str
    rate_hz: float
    deadline_ms: float
    percentile: str
    description: str = ""
    percent_of_fp32: float | None = None
    metric_floor: float | None = None
    cores: int | None = None
    memory_mib: float | None = None
    energy_j_per_inference: float | None = None
    path: str = ""

    @property
    def scenario(self) -> str:
        """The chipbench scenario that produces this arrival pattern (fixed-rate or server)."""
        return PATTERNS[self.pattern]

    @property
    def tail(self) -> str:
        """The record's tail name for the percentile (p90, p99, p999)."""
        return PERCENTILES[self.percentile][0]

    @property
    def percent(self) -> float:
        """The percentile in percent (90.0, 99.0, 99.9)."""
        return PERCENTILES[self.percentile][1]

    @property
    def min_count(self) -> int:
        """Queries needed before LoadGen's early-stopping bound supports the percentile at 99 %
        confidence (chipbench.tails.min_count: 64 for p90, 662 for p99, 6,636 for p99.9)."""
        from chipbench.tails import min_count

        return min_count(self.percent / 100.0)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (a fit record's `fit.requirement`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Requirement:
        """A requirement as `to_dict` wrote it. TypeError for unknown or missing fields."""
        return cls(**data)

    def summary(self) -> str:
        """One line: "edge-inspect, fixed 30 Hz, p99 ≤ 33 ms, ≥ 99 % of FP32, ≤ 2 cores, ≤ 1024 MiB"."""
        parts = [self.workload, f"{self.pattern} {self.rate_hz:g} Hz", f"{self.percentile} ≤ {self.deadline_ms:g} ms"]
        if self.percent_of_fp32 is not None:
            parts.append(f"≥ {self.percent_of_fp32:g} % of FP32")
        if self.metric_floor is not None:
            parts.append(f"task metric floor {self.metric_floor:g}")
        if self.cores is not None:
            parts.append(f"≤ {self.cores} cores")
        if self.memory_mib is not None:
            parts.append(f"≤ {self.memory_mib:g} MiB")
        if self.energy_j_per_inference is not None:
            parts.append(f"≤ {self.energy_j_per_inference:g} J/inference")
        return ", ".join(parts)


def load_requirement(path: Path | str) -> Requirement:
    """Parse the requirement file at `path` (format in the module docstring). RequirementError
    naming the file and field for a missing file, bad TOML, an unknown or missing field, a value
    of the wrong type or out of range, or an unknown workload."""
    path = Path(path)
    data = read_toml(path, "requirement", RequirementError)
    try:
        return _parse(data, path)
    except RequirementError as exc:
        raise RequirementError(f"{path}: {exc}") from None


def _parse(data: dict[str, Any], path: Path) -> Requirement:
    _known(data, "")
    for table in ("arrival", "latency", "accuracy", "budget"):
        if table in data:
            if not isinstance(data[table], dict):
                raise RequirementError(f"{table} must be a table ([{table}]), got {data[table]!r}")
            _known(data[table], table)
    name = _string(data, "name", "", default=path.stem)
    description = _string(data, "description", "", default="")
    workload = _string(data, "workload", "")
    from chipbench.workloads.base import workload_names

    if workload not in workload_names():
        raise RequirementError(f"workload: unknown workload '{workload}' (known: {', '.join(sorted(workload_names()))})")
    arrival, latency = _table(data, "arrival"), _table(data, "latency")
    accuracy, budget = data.get("accuracy", {}), data.get("budget", {})
    pattern = _string(arrival, "pattern", "arrival.")
    if pattern not in PATTERNS:
        raise RequirementError(f"arrival.pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}")
    percentile = _string(latency, "percentile", "latency.")
    if percentile not in PERCENTILES:
        raise RequirementError(f"latency.percentile must be one of {', '.join(PERCENTILES)}, got {percentile!r}")
    if "percent_of_fp32" in accuracy and "metric_floor" in accuracy:
        raise RequirementError("accuracy: give percent_of_fp32 or metric_floor, not both")
    percent = _number(accuracy, "percent_of_fp32", "accuracy.", required=False)
    if percent is not None and percent > 100:
        raise RequirementError(f"accuracy.percent_of_fp32 must be a number in (0, 100], got {percent!r}")
    cores = budget.get("cores")
    if cores is not None and (not isinstance(cores, int) or isinstance(cores, bool) or cores < 1):
        raise RequirementError(f"budget.cores must be an integer >= 1, got {cores!r}")
    return Requirement(
        name=name, workload=workload, pattern=pattern,
        rate_hz=_number(arrival, "rate_hz", "arrival."),
        deadline_ms=_number(latency, "deadline_ms", "latency."),
        percentile=percentile, description=description, percent_of_fp32=percent,
        metric_floor=_number(accuracy, "metric_floor", "accuracy.", required=False, positive=False),
        cores=cores,
        memory_mib=_number(budget, "memory_mib", "budget.", required=False),
        energy_j_per_inference=_number(budget, "energy_j_per_inference", "budget.", required=False),
        path=str(path),
    )


def _known(table: dict[str, Any], where: str) -> None:
    unknown = sorted(set(table) - set(_KEYS[where]))
    if unknown:
        place = f"[{where}]" if where else "the top level"
        raise RequirementError(f"unknown field(s) {', '.join(unknown)} in {place} "
                               f"(known: {', '.join(_KEYS[where])})")


def _table(data: dict[str, Any], name: str) -> dict[str, Any]:
    if name not in data:
        raise RequirementError(f"[{name}] is missing")
    return data[name]


def _string(table: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    if key not in table:
        if default is None:
            raise RequirementError(f"{where}{key} is missing")
        return default
    value = table[key]
    if not isinstance(value, str) or (not value and default is None):
        raise RequirementError(f"{where}{key} must be a non-empty string, got {value!r}")
    return value


def _number(table: dict[str, Any], key: str, where: str, required: bool = True, positive: bool = True) -> float | None:
    if key not in table:
        if required:
            raise RequirementError(f"{where}{key} is missing")
        return None
    value = table[key]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value or value in (float("inf"), float("-inf")):
        raise RequirementError(f"{where}{key} must be a number{' > 0' if positive else ''}, got {value!r}")
    if positive and not value > 0:
        raise RequirementError(f"{where}{key} must be a number > 0, got {value!r}")
    return float(value)
