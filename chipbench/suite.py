"""Cells and suites: a suite is a list of cells, from a TOML file or from CLI flags."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from chipbench.paths import read_toml
from chipbench.scenarios import SCENARIOS, MeasureSettings

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


class SuiteError(ValueError):
    """A suite file or flag that cannot be used; the message names what and where."""


@dataclass(frozen=True)
class Cell:
    workload: str
    backend: str
    precision: str = "fp32"
    scenario: str = "single-stream"
    batch: int | None = None  # offline batch; single-stream is always 1
    seed: int = 0
    threads: int | None = None
    timeout_s: float = 600.0
    tuning_db: str | None = None
    task_samples: int = 256  # test-split samples for the task metric (0: fidelity only)
    workload_params: dict[str, Any] = field(default_factory=dict)
    kernel: str | None = None  # a kernel case name, e.g. "gemm/square-1024" (then `workload` is it too)
    model: str | None = None  # bring-your-own ONNX file (then `workload` is its label)
    inputs: tuple[str, ...] = ()  # NAME:SHAPE[:DTYPE] for a model's dynamic inputs
    input_data: str | None = None  # arrays to feed the model (.npz, .npy, .pb, test-data folder)
    expected: str | None = None  # the model's expected outputs on input_data
    profile_runs: int | None = None  # a per-operator profile over this many runs instead of a benchmark
    device: str | None = None  # cpu, cuda[:N], rpc://HOST:PORT/KEY; None: the backend's own default
    target: str | None = None  # compile for this target instead of the device's own (cross-compilation)
    pin: str | None = None  # CPUs the cell process runs on, e.g. "0,1" or "0-3" (chipbench.resources)
    no_transfer: bool = False  # tuned backends: no database transferred from another target (tuning.transfer)
    settings: MeasureSettings = field(default_factory=MeasureSettings)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not data["no_transfer"]:  # left out when off, so cells from before it keep their keys
            del data["no_transfer"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cell:
        data = dict(data)
        data["settings"] = MeasureSettings(**data.get("settings", {}))
        data["inputs"] = tuple(data.get("inputs", ()))
        return cls(**data)

    def with_absolute_paths(self) -> Cell:
        """The cell with its file paths made absolute: cells run in a folder of their own."""
        paths = {k: str(Path(v).resolve()) for k in ("model", "input_data", "expected", "tuning_db")
                 if (v := getattr(self, k))}
        return replace(self, **paths)

    def label(self) -> str:
        batch = f" b{self.batch}" if self.scenario == "offline" and self.batch else ""
        device = f" @ {self.device}" if self.device else ""
        what = f"per-op profile, {self.profile_runs} runs" if self.profile_runs else self.scenario
        return f"{self.workload} × {self.backend}{device} [{self.precision}, {what}{batch}]"


_CELL_KEYS = {f.name for f in fields(Cell)} - {"settings"}
_SETTING_KEYS = {f.name for f in fields(MeasureSettings)}

# numeric settings: (type, lowest value, whether the lowest value itself is allowed)
_LIMITS: dict[str, tuple[type, float, bool]] = {
    "batch": (int, 1, True), "seed": (int, 0, True), "threads": (int, 1, True), "timeout_s": (float, 0, False),
    "task_samples": (int, 0, True), "warmup_count": (int, 0, True), "warmup_s": (float, 0, True),
    "min_count": (int, 1, True), "min_duration_s": (float, 0, True), "max_duration_s": (float, 0, False),
    "max_count": (int, 1, True), "offline_batch": (int, 1, True), "profile_runs": (int, 1, True),
    "prompts_per_len": (int, 1, True), "output_tokens": (int, 1, True),
    "quiet_cores": (float, 0, True),
}
_OPTIONAL_STRINGS = ("tuning_db", "kernel", "model", "input_data", "expected", "device", "target", "pin")


def check_cell(cell: Cell) -> None:
    """Every field of the right type and in range; raises SuiteError naming the field, what it
    must be and what it was (before any cell runs)."""
    values = {**{k: getattr(cell, k) for k in _CELL_KEYS}, **cell.settings.to_dict()}
    for name, (kind, low, inclusive) in _LIMITS.items():
        value = values[name]
        if value is None and name in ("batch", "threads", "profile_runs", "quiet_cores"):
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (kind is int and not isinstance(value, int)):
            raise SuiteError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
        if value < low or (value == low and not inclusive):
            bound = f">= {low:g}" if inclusive else f"> {low:g}"
            raise SuiteError(f"{name} must be {bound}, got {value!r}")
    for name in ("workload", "backend", "precision", "scenario"):
        if not isinstance(values[name], str) or not values[name]:
            raise SuiteError(f"{name} must be a non-empty string, got {values[name]!r}")
    for name in _OPTIONAL_STRINGS:
        if values[name] is not None and not isinstance(values[name], str):
            raise SuiteError(f"{name} must be a string, got {values[name]!r}")
    if not isinstance(cell.no_transfer, bool):
        raise SuiteError(f"no_transfer must be true or false, got {cell.no_transfer!r}")
    if not isinstance(cell.workload_params, dict):
        raise SuiteError(f"workload_params must be a table, got {cell.workload_params!r}")
    if not all(isinstance(i, str) for i in cell.inputs):
        raise SuiteError(f"inputs must be a list of NAME:SHAPE strings, got {list(cell.inputs)!r}")
    if cell.precision not in PRECISIONS:
        raise SuiteError(f"unknown precision '{cell.precision}' (known: {', '.join(PRECISIONS)})")
    if cell.scenario not in SCENARIOS:
        raise SuiteError(f"unknown scenario '{cell.scenario}' (known: {', '.join(SCENARIOS)})")
    _check_arrival_settings(cell)
    lens = cell.settings.prompt_lens
    if (not isinstance(lens, tuple) or not lens
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in lens)):
        raise SuiteError(f"prompt_lens must be a non-empty list of integers >= 1, got {list(lens) if isinstance(lens, tuple) else lens!r}")
    if cell.settings.max_count < cell.settings.min_count:
        raise SuiteError(f"max_count ({cell.settings.max_count}) is below min_count ({cell.settings.min_count})")
    if cell.pin is not None:
        from chipbench.resources import PinError, check_pin

        try:
            check_pin(cell.pin)
        except PinError as exc:
            raise SuiteError(str(exc)) from None
    if cell.device is not None:
        from chipbench.device import Device, DeviceError

        try:
            Device.parse(cell.device)
        except DeviceError as exc:
            raise SuiteError(str(exc).replace("--device", "device", 1)) from None


# the scenario settings that may be None (the workload's): name -> (type, low, high, inclusive low)
_OPTIONAL_SETTINGS: dict[str, tuple[type, float, float, bool]] = {
    "samples_per_query": (int, 1, float("inf"), True), "target_qps": (float, 0, float("inf"), False),
    "rate_hz": (float, 0, float("inf"), False), "latency_bound_ms": (float, 0, float("inf"), False),
    "percentile": (float, 0, 100, False), "accuracy_log_probability": (float, 0, 1, True),
}


def _check_arrival_settings(cell: Cell) -> None:
    """The scenario settings (None = the workload's) of the right type and in range, and
    find_peak a boolean that goes with the server scenario; SuiteError naming the field."""
    settings = cell.settings
    for name, (kind, low, high, inclusive) in _OPTIONAL_SETTINGS.items():
        value = getattr(settings, name)
        if value is None:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (kind is int and not isinstance(value, int)):
            raise SuiteError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
        if value < low or (value == low and not inclusive) or value > high or (high == 100 and value == high):
            span = f"{'>=' if inclusive else '>'} {low:g}" + (f" and {'<' if high == 100 else '<='} {high:g}" if high != float("inf") else "")
            raise SuiteError(f"{name} must be {span}, got {value!r}")
    if not isinstance(settings.find_peak, bool):
        raise SuiteError(f"find_peak must be true or false, got {settings.find_peak!r}")
    if settings.find_peak and cell.scenario != "server":
        raise SuiteError(f"find_peak goes with the server scenario, not {cell.scenario}")


def expand(workloads: list[str], backends: list[str], precisions: list[str] | None = None,
           scenarios: list[str] | None = None, **common: Any) -> list[Cell]:
    """The cross product workload × backend × precision × scenario, with shared options."""
    settings = MeasureSettings(**{k: common.pop(k) for k in list(common) if k in _SETTING_KEYS})
    unknown = set(common) - _CELL_KEYS
    if unknown:
        raise SuiteError(f"unknown key(s) {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(_CELL_KEYS | _SETTING_KEYS))})")
    if "inputs" in common:
        if isinstance(common["inputs"], str) or not isinstance(common["inputs"], (list, tuple)):
            raise SuiteError(f"inputs must be a list of NAME:SHAPE strings, got {common['inputs']!r}")
        common["inputs"] = tuple(common["inputs"])
    cells = []
    for w, b, p, s in itertools.product(workloads, backends, precisions or ["fp32"], scenarios or ["single-stream"]):
        if p not in PRECISIONS:
            raise SuiteError(f"unknown precision '{p}' (known: {', '.join(PRECISIONS)})")
        if s not in SCENARIOS:
            raise SuiteError(f"unknown scenario '{s}' (known: {', '.join(SCENARIOS)})")
        cells.append(Cell(workload=w, backend=b, precision=p, scenario=s, settings=settings, **common))
    return cells


def load_suite(path: Path, _including: tuple[Path, ...] = ()) -> list[Cell]:
    """A TOML suite: optional `include` (suite files, relative to this one, whose cells come
    first, each with its own defaults), optional [defaults], then [[cells]] tables, each of which
    may list several workloads/backends/precisions/scenarios (expanded as a cross product).
    Raises SuiteError naming the file (and the cell table) for anything that is not a valid
    suite, an include cycle included."""
    path = Path(path)
    data = read_toml(path, "suite", SuiteError)
    unknown = set(data) - {"include", "defaults", "cells"}
    if unknown:
        raise SuiteError(f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))} "
                         f"(a suite has include, [defaults] and [[cells]])")
    try:
        includes = _as_list(data.get("include"), "include", required=False)
    except SuiteError as exc:
        raise SuiteError(f"{path}: {exc}") from None
    included: list[Cell] = []
    for name in includes:
        other = (path.parent / name).resolve()
        if other in (*_including, path.resolve()):
            raise SuiteError(f"{path}: include {name!r} includes itself")
        included += load_suite(other, (*_including, path.resolve()))
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise SuiteError(f"{path}: [defaults] must be a table, got {defaults!r}")
    tables = data.get("cells", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise SuiteError(f"{path}: cells must be an array of tables ([[cells]]), got {tables!r}"[:300])
    cells: list[Cell] = []
    for i, table in enumerate(tables, 1):
        merged = {**defaults, **table}
        try:
            kernels = _kernel_names(_as_list(merged.pop("kernels", None), "kernels", required=False),
                                    merged.pop("kernel_tag", None))
            backends = _as_list(merged.pop("backend", merged.pop("backends", None)), "backend")
            if kernels:
                new = [replace(c, kernel=c.workload) for c in expand(kernels, backends, **merged)]
            else:
                new = expand(
                    _as_list(merged.pop("workload", merged.pop("workloads", None)), "workload"), backends,
                    _as_list(merged.pop("precision", merged.pop("precisions", "fp32")), "precision"),
                    _as_list(merged.pop("scenario", merged.pop("scenarios", "single-stream")), "scenario"),
                    **merged,
                )
            for cell in new:
                check_cell(cell)
            cells += new
        except (SuiteError, TypeError) as exc:
            raise SuiteError(f"{path}: cells #{i}: {exc}") from None
        except KeyError as exc:  # an unknown kernel case or tag
            raise SuiteError(f"{path}: cells #{i}: {exc.args[0] if exc.args else exc}") from None
    if not cells and not included:
        raise SuiteError(f"{path}: no [[cells]] defined")
    return included + cells


def _kernel_names(names: list[str] | None, tag: str | None) -> list[str]:
    """Kernel cases named in a suite, directly or by tag."""
    if not names and not tag:
        return []
    from chipbench.kernels.cases import kernel_cases

    tagged = [c.name for c in kernel_cases(tag)] if tag else []
    return list(dict.fromkeys([*(names or []), *tagged]))


def _as_list(value: Any, what: str, required: bool = True) -> list[str]:
    if value is None:
        if required:
            raise SuiteError(f"names no {what}")
        return []
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise SuiteError(f"{what} must be a name or a list of names, got {value!r}")
    return values


def with_overrides(cells: list[Cell], **overrides: Any) -> list[Cell]:
    """Apply CLI overrides (None = keep) to every cell; measurement keys go into settings."""
    out = []
    for cell in cells:
        settings = replace(cell.settings, **{k: v for k, v in overrides.items() if k in _SETTING_KEYS and v is not None})
        top = {k: v for k, v in overrides.items() if k in _CELL_KEYS and v is not None}
        out.append(replace(cell, settings=settings, **top))
    return out
