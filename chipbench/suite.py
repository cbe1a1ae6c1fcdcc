"""Cells and suites: a suite is a list of cells, from a TOML file or from CLI flags."""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

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
    device: str | None = None  # cpu, cuda[:N], rpc://HOST:PORT/KEY; None: the backend's own default
    target: str | None = None  # compile for this target instead of the device's own (cross-compilation)
    settings: MeasureSettings = field(default_factory=MeasureSettings)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cell:
        data = dict(data)
        data["settings"] = MeasureSettings(**data.get("settings", {}))
        data["inputs"] = tuple(data.get("inputs", ()))
        return cls(**data)

    def label(self) -> str:
        batch = f" b{self.batch}" if self.scenario == "offline" and self.batch else ""
        device = f" @ {self.device}" if self.device else ""
        return f"{self.workload} × {self.backend}{device} [{self.precision}, {self.scenario}{batch}]"


_CELL_KEYS = {f.name for f in fields(Cell)} - {"settings"}
_SETTING_KEYS = {f.name for f in fields(MeasureSettings)}


def expand(workloads: list[str], backends: list[str], precisions: list[str] | None = None,
           scenarios: list[str] | None = None, **common: Any) -> list[Cell]:
    """The cross product workload × backend × precision × scenario, with shared options."""
    settings = MeasureSettings(**{k: common.pop(k) for k in list(common) if k in _SETTING_KEYS})
    unknown = set(common) - _CELL_KEYS
    if unknown:
        raise SuiteError(f"unknown option(s): {', '.join(sorted(unknown))}")
    cells = []
    for w, b, p, s in itertools.product(workloads, backends, precisions or ["fp32"], scenarios or ["single-stream"]):
        if p not in PRECISIONS:
            raise SuiteError(f"unknown precision '{p}' (known: {', '.join(PRECISIONS)})")
        if s not in SCENARIOS:
            raise SuiteError(f"unknown scenario '{s}' (known: {', '.join(SCENARIOS)})")
        cells.append(Cell(workload=w, backend=b, precision=p, scenario=s, settings=settings, **common))
    return cells


def load_suite(path: Path) -> list[Cell]:
    """A TOML suite: optional [defaults], then [[cells]] tables, each of which may list several
    workloads/backends/precisions/scenarios (expanded as a cross product)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SuiteError(f"{path}: no such suite file") from None
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{path}: not valid TOML ({exc})") from None
    defaults = data.get("defaults", {})
    cells: list[Cell] = []
    for i, table in enumerate(data.get("cells", []), 1):
        merged = {**defaults, **table}
        kernels = _kernel_names(merged.pop("kernels", None), merged.pop("kernel_tag", None))
        try:
            if kernels:
                cells += [replace(c, kernel=c.workload) for c in expand(
                    kernels, _as_list(merged.pop("backend", merged.pop("backends", None)), "backend", path, i),
                    **merged)]
                continue
            cells += expand(
                _as_list(merged.pop("workload", merged.pop("workloads", None)), "workload", path, i),
                _as_list(merged.pop("backend", merged.pop("backends", None)), "backend", path, i),
                _as_list(merged.pop("precision", merged.pop("precisions", "fp32")), "precision", path, i),
                _as_list(merged.pop("scenario", merged.pop("scenarios", "single-stream")), "scenario", path, i),
                **merged,
            )
        except (SuiteError, TypeError) as exc:
            raise SuiteError(f"{path}: cells #{i}: {exc}") from None
    if not cells:
        raise SuiteError(f"{path}: no [[cells]] defined")
    return cells


def _kernel_names(names: list[str] | None, tag: str | None) -> list[str]:
    """Kernel cases named in a suite, directly or by tag."""
    if not names and not tag:
        return []
    from chipbench.kernels.cases import kernel_cases

    tagged = [c.name for c in kernel_cases(tag)] if tag else []
    return list(dict.fromkeys([*(names or []), *tagged]))


def _as_list(value: Any, what: str, path: Path, index: int) -> list[str]:
    if value is None:
        raise SuiteError(f"{path}: cells #{index} names no {what}")
    return [value] if isinstance(value, str) else list(value)


def with_overrides(cells: list[Cell], **overrides: Any) -> list[Cell]:
    """Apply CLI overrides (None = keep) to every cell; measurement keys go into settings."""
    out = []
    for cell in cells:
        settings = replace(cell.settings, **{k: v for k, v in overrides.items() if k in _SETTING_KEYS and v is not None})
        top = {k: v for k, v in overrides.items() if k in _CELL_KEYS and v is not None}
        out.append(replace(cell, settings=settings, **top))
    return out
