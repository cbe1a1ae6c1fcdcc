"""Co-design what-if: how a workload would run on an accelerator that exists only as a spec sheet.

A hardware spec (`hardware/*.toml`) gives peak FLOP/s per precision, DRAM bandwidth, on-chip
memory and clock. The workload's ONNX graph at the given batch gives, per node, its FLOPs and
minimum bytes (`chipbench.kernels.onnx_flops`). The model, kept deliberately simple:

- Each node runs alone at the roofline: time = max(FLOPs / peak, DRAM bytes / bandwidth),
  divided by an efficiency factor (1.0 = ideal roofline; a calibrated factor says how far the
  ops a backend ran on *this* machine sat below this machine's measured roofline, from its
  per-op profile: time-weighted by default, or the median op's ratio; `calibration_from_ops`).
  It is measured at FP32 here and applied as is to every precision on the new chip.
- Bytes scale with the precision: the graph is FP32, so fp16/bf16 move half the bytes and
  int8 a quarter (weights and activations alike; scales, zero points and wider accumulators
  are ignored).
- On-chip memory: when a node's whole working set (inputs + weights + outputs) fits on chip,
  its activations are assumed to stay there (produced and consumed on chip; the graph's own
  input and output included), so only its weights come from DRAM; nodes that do not fit
  stream everything. The all-DRAM total is reported next to it. Weights are never assumed
  resident across inferences (a note says when they would all fit).
- Pure views (Reshape, Flatten, Squeeze, Unsqueeze, Identity, Constant, Shape, Dropout) cost
  nothing: an accelerator compiler aliases them.
- Nothing is fused and nothing overlaps: nodes run one after another, so the total is the sum.

What-ifs: the same with 2x bandwidth and with 2x compute (every precision), which tells which
resource binds the chip on this workload; the ops that take the most projected time, with their
bound, are the ones that bind.
"""

from __future__ import annotations

import math
import statistics
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
VIEW_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Constant", "Shape", "Dropout"})
HARDWARE_DIR = Path(__file__).resolve().parent.parent / "hardware"

_REQUIRED = {
    "name": "the chip's name",
    "description": "one line on what it is",
    "peak_tflops": "a table of dense peak TFLOP/s (int8: TOPS) per precision",
    "bandwidth_gbps": "DRAM bandwidth in GB/s",
    "onchip_mib": "on-chip memory (SRAM) in MiB",
    "clock_ghz": "clock in GHz",
}
_OPTIONAL = {"hypothetical": bool, "notes": str}


class HardwareSpecError(ValueError):
    """A hardware spec file that cannot be used (one line naming the file and the key)."""


@dataclass(frozen=True)
class HardwareSpec:
    name: str
    description: str
    peak_tflops: dict[str, float]  # per precision; int8 in TOPS; a precision left out is unsupported
    bandwidth_gbps: float
    onchip_mib: float
    clock_ghz: float
    hypothetical: bool = False
    notes: str = ""
    path: str = ""

    def peak_flops(self, precision: str) -> float:
        """FLOP/s (int8: OP/s) at `precision`; HardwareSpecError when the chip has none."""
        if precision not in self.peak_tflops:
            raise HardwareSpecError(
                f"{self.path or self.name}: no '{precision}' peak in peak_tflops "
                f"(this chip has {', '.join(self.peak_tflops)})")
        return self.peak_tflops[precision] * 1e12

    @property
    def bandwidth(self) -> float:
        return self.bandwidth_gbps * 1e9

    @property
    def onchip_bytes(self) -> float:
        return self.onchip_mib * 2**20

    def ceilings(self, precision: str = "fp32"):
        from chipbench.roofline import Ceilings

        return Ceilings(self.peak_flops(precision) / 1e9, self.bandwidth_gbps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _positive(path: Path, key: str, value: Any, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        want = "a number >= 0" if allow_zero else "a positive number"
        raise HardwareSpecError(f"{path}: key '{key}' must be {want}, got {value!r}")
    return float(value)


def load_spec(path: str | Path) -> HardwareSpec:
    """Read and validate a hardware spec TOML; errors are one line naming the file and key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise HardwareSpecError(f"{path}: no such hardware spec file") from None
    except tomllib.TOMLDecodeError as exc:
        raise HardwareSpecError(f"{path}: invalid TOML: {str(exc).splitlines()[0]}") from None
    for key in data:
        if key not in _REQUIRED and key not in _OPTIONAL:
            known = ", ".join([*_REQUIRED, *_OPTIONAL])
            raise HardwareSpecError(f"{path}: unknown key '{key}' (known: {known})")
    for key, what in _REQUIRED.items():
        if key not in data:
            raise HardwareSpecError(f"{path}: missing key '{key}' ({what})")
    for key in ("name", "description"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise HardwareSpecError(f"{path}: key '{key}' must be a non-empty string")
    for key, kind in _OPTIONAL.items():
        if key in data and not isinstance(data[key], kind):
            raise HardwareSpecError(f"{path}: key '{key}' must be a {kind.__name__}, got {data[key]!r}")
    peaks = data["peak_tflops"]
    if not isinstance(peaks, dict) or not peaks:
        raise HardwareSpecError(f"{path}: key 'peak_tflops' must be a table with at least one of "
                                f"{', '.join(PRECISIONS)}")
    for precision in peaks:
        if precision not in PRECISIONS:
            raise HardwareSpecError(f"{path}: key 'peak_tflops.{precision}' is not a precision "
                                    f"({', '.join(PRECISIONS)})")
    return HardwareSpec(
        name=data["name"].strip(),
        description=data["description"].strip(),
        peak_tflops={p: _positive(path, f"peak_tflops.{p}", v) for p, v in peaks.items()},
        bandwidth_gbps=_positive(path, "bandwidth_gbps", data["bandwidth_gbps"]),
        onchip_mib=_positive(path, "onchip_mib", data["onchip_mib"], allow_zero=True),
        clock_ghz=_positive(path, "clock_ghz", data["clock_ghz"]),
        hypothetical=data.get("hypothetical", False),
        notes=data.get("notes", ""),
        path=str(path),
    )


def builtin_specs() -> list[Path]:
    """The spec files shipped in the repository's `hardware/` folder."""
    return sorted(HARDWARE_DIR.glob("*.toml"))


def resolve_spec_path(spec: str | Path) -> Path:
    """A path as given, or the name of a shipped spec ("edge-npu" -> hardware/edge-npu.toml)."""
    p = Path(spec)
    if p.exists() or p.suffix == ".toml" or "/" in str(spec):
        return p
    return HARDWARE_DIR / f"{spec}.toml"


# ---------------------------------------------------------------------------------------------
# the ops to project


@dataclass(frozen=True)
class OpWork:
    """One node's work, at FP32: FLOPs, minimum bytes (inputs + outputs once), of which weights."""

    name: str
    op_type: str
    flops: float
    bytes: float
    weight_bytes: float = 0.0


def graph_work(onnx_path: str | Path) -> list[OpWork]:
    """OpWork per ONNX node (onnx_flops counts; weights = inputs computed from initializers only)."""
    import numpy as np
    import onnx
    from onnx import helper

    from chipbench.kernels.onnx_flops import node_costs

    model = onnx.load(str(onnx_path))
    costs = node_costs(model)
    size: dict[str, float] = {}
    for init in model.graph.initializer:
        size[init.name] = math.prod(init.dims) * np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
    const = set(size)
    for node, cost in zip(model.graph.node, costs):  # Constant, and Identity/Cast/... of constants
        ins, outs = [t for t in node.input if t], [t for t in node.output if t]
        if outs and (node.op_type == "Constant" or (ins and all(t in const for t in ins))):
            out_bytes = max(cost.bytes - sum(size.get(t, 0) for t in ins), 0)  # bytes = ins + outs
            for t in outs:
                const.add(t)
                size[t] = out_bytes / len(outs)
    work = []
    for node, cost in zip(model.graph.node, costs):
        weights = sum(size.get(t, 0) for t in node.input if t in const)
        work.append(OpWork(cost.name, cost.op_type, float(cost.flops), float(cost.bytes),
                           float(min(weights, cost.bytes))))
    return work


# ---------------------------------------------------------------------------------------------
# calibration


@dataclass(frozen=True)
class Calibration:
    """How far real code sits below the roofline: projected time = roofline time / factor."""

    factor: float
    source: str
    n_ops: int = 0
    median: float | None = None  # median over ops of achieved / attainable
    aggregate: float | None = None  # sum of roofline-bound time / sum of measured time (same ops)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


IDEAL = Calibration(1.0, "none: ideal roofline (efficiency 1.0)")


def calibration_from_ops(ops: Iterable[Any], label: str = "", method: str = "aggregate") -> Calibration:
    """An efficiency factor from measured ops (`OpTime`s placed on this machine's roofline).

    "aggregate" (default): the ops' roofline-bound time over their measured time, i.e. the time-
    weighted efficiency; projecting onto this machine's own ceilings with it gives back the
    measured total of these ops. "median": the median op's achieved / attainable, which weighs a
    1 us Flatten like a 1 ms Conv. Ops with no FLOPs or no roofline placement are left out; none
    left gives the ideal 1.0. Factors above 1 (ops beating the measured ceilings, e.g. data that
    stays in cache) are clamped to 1."""
    if method not in ("aggregate", "median"):
        raise ValueError(f"calibration method must be aggregate or median, not '{method}'")
    ratios, bound_s, measured_s = [], 0.0, 0.0
    for op in ops:
        pct = getattr(op, "pct_of_roofline", None)
        if pct is None or pct <= 0 or not op.flops or not op.bound_gflops:
            continue
        ratios.append(pct / 100.0)
        measured_s += op.time_ms / 1e3
        bound_s += op.flops / (op.bound_gflops * 1e9)
    what = f"{len(ratios)} {label + ' ' if label else ''}ops measured on this machine"
    if not ratios:
        return Calibration(1.0, f"{label or 'measured ops'}: none placed on the roofline, so ideal (1.0)")
    median = float(statistics.median(ratios))
    aggregate = bound_s / measured_s if measured_s else median
    raw = aggregate if method == "aggregate" else median
    how = ("roofline-bound time / measured time" if method == "aggregate" else "median achieved/attainable")
    src = (f"{how} of {what} = {raw:.3f}{', clamped to 1.0' if raw > 1 else ''} "
           f"(median {median:.3f}, time-weighted {aggregate:.3f})")
    return Calibration(min(raw, 1.0), src, len(ratios), median, aggregate)


def resolve_calibration(calibration: Any, workload_name: str = "", batch: int = 1,
                        workload_params: dict | None = None, device: Any = None,
                        results_dir: str | Path = "results") -> Calibration:
    """None / "none" -> ideal; a number -> that factor; a Calibration as is; a list of OpTime or
    an OpProfile -> `calibration_from_ops`; a backend name ("ort-cpu", "tvm-llvm") -> profile
    the workload on it here, placed against this machine's ceilings (`device`, else the
    profile saved under `results_dir`, else a quick probe that is not saved)."""
    if calibration is None or calibration == "none":
        return IDEAL
    if isinstance(calibration, Calibration):
        return calibration
    if isinstance(calibration, (int, float)) and not isinstance(calibration, bool):
        if not 0 < calibration <= 1:
            raise ValueError(f"calibration factor must be in (0, 1], got {calibration}")
        return Calibration(float(calibration), f"given: {calibration:g}")
    if hasattr(calibration, "ops"):  # an OpProfile
        return calibration_from_ops(calibration.ops, calibration.backend)
    if isinstance(calibration, str):
        from chipbench.backends.base import backend_names
        from chipbench.opprofile import attach_roofline
        from chipbench.profiling import profile_cell, take_profile
        from chipbench.store import ResultsStore

        if calibration not in backend_names():
            raise ValueError(f"calibration must be none, a factor, or a backend ({', '.join(backend_names())}); "
                             f"got '{calibration}'")
        note = ""
        if device is None:
            from chipbench.probe import load_profile, measure_ceilings

            device = load_profile(Path(results_dir))
            if device is None:
                device, note = measure_ceilings(quick=True), "; ceilings from a quick probe (not saved)"
        store = ResultsStore(results_dir)
        store.check_writable()
        prof = take_profile(profile_cell(workload_name, calibration, batch, 10, workload_params=workload_params), store)
        attach_roofline(prof, device)
        cal = calibration_from_ops(prof.ops, calibration)
        return Calibration(cal.factor, cal.source + note, cal.n_ops, cal.median, cal.aggregate)
    ops = list(calibration)
    return calibration_from_ops(ops, getattr(ops[0], "backend", "") if ops else "")


# ---------------------------------------------------------------------------------------------
# projection


@dataclass(frozen=True)
class OpProjection:
    name: str
    op_type: str
    flops: float
    bytes: float  # working set at the projected precision
    dram_bytes: float  # what comes from DRAM under the on-chip rule
    fits_onchip: bool
    compute_s: float  # FLOPs / peak
    memory_s: float  # DRAM bytes / bandwidth
    time_s: float  # max(compute_s, memory_s) / efficiency
    bound: str  # "compute", "memory" or "free"
    share: float = 0.0


@dataclass
class Projection:
    workload: str
    batch: int
    precision: str
    chip: str
    spec_path: str
    hypothetical: bool
    peak_tflops: float
    bandwidth_gbps: float
    onchip_mib: float
    ridge: float  # FLOP/byte
    calibration: Calibration
    ops: list[OpProjection]
    total_s: float  # with the on-chip rule
    total_dram_only_s: float  # every byte from DRAM
    what_if: dict[str, float]  # "2x_bandwidth", "2x_compute": totals under the on-chip rule
    compute_bound_share: float  # of total_s
    memory_bound_share: float
    notes: list[str] = field(default_factory=list)

    def binding(self, top: int = 5) -> list[OpProjection]:
        """The ops that take the most projected time (they bind the chip)."""
        return sorted(self.ops, key=lambda o: -o.time_s)[:top]

    @property
    def binds(self) -> str:
        """Which resource binds the chip on this workload: "memory", "compute" or "balanced"."""
        bw, comp = self.what_if["2x_bandwidth"], self.what_if["2x_compute"]
        if math.isclose(bw, comp, rel_tol=0.05):
            return "balanced"
        return "memory" if bw < comp else "compute"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["binds"] = self.binds
        return d


def _project_op(op: OpWork, spec: HardwareSpec, peak: float, bandwidth: float, scale: float,
                efficiency: float, onchip: bool = True) -> OpProjection:
    if op.op_type in VIEW_OPS:
        return OpProjection(op.name, op.op_type, 0.0, 0.0, 0.0, True, 0.0, 0.0, 0.0, "free")
    nbytes, weights = op.bytes * scale, op.weight_bytes * scale
    fits = spec.onchip_bytes > 0 and nbytes <= spec.onchip_bytes
    dram = weights if (fits and onchip) else nbytes
    compute_s, memory_s = op.flops / peak, dram / bandwidth
    if compute_s == 0 and memory_s == 0:
        bound = "free"
    else:
        bound = "compute" if compute_s >= memory_s else "memory"
    return OpProjection(op.name, op.op_type, op.flops, nbytes, dram, fits, compute_s, memory_s,
                        max(compute_s, memory_s) / efficiency, bound)


def project_ops(ops: Sequence[OpWork], spec: HardwareSpec, precision: str = "fp32",
                calibration: Calibration | float | None = None, workload: str = "", batch: int = 1,
                source_precision: str = "fp32") -> Projection:
    """The projection math on a given op list (no model, no measurement): see the module doc."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not '{precision}'")
    cal = resolve_calibration(calibration) if not isinstance(calibration, Calibration) else calibration
    peak, bandwidth = spec.peak_flops(precision), spec.bandwidth
    scale = BYTES_PER_ELEMENT[precision] / BYTES_PER_ELEMENT[source_precision]
    eff = cal.factor

    def total(peak_: float, bw_: float, onchip: bool = True) -> float:
        return sum(_project_op(o, spec, peak_, bw_, scale, eff, onchip).time_s for o in ops)

    projected = [_project_op(o, spec, peak, bandwidth, scale, eff) for o in ops]
    total_s = sum(o.time_s for o in projected)
    projected = [OpProjection(**{**asdict(o), "share": o.time_s / total_s if total_s else 0.0})
                 for o in projected]
    compute_s = sum(o.time_s for o in projected if o.bound == "compute")
    memory_s = sum(o.time_s for o in projected if o.bound == "memory")
    notes = []
    weights = sum(o.weight_bytes for o in ops) * scale
    if spec.onchip_bytes and weights <= spec.onchip_bytes:
        notes.append(f"all weights ({weights / 2**20:.2f} MiB at {precision}) would fit on chip: a "
                     "compiler keeping them resident across inferences would cut DRAM traffic further")
    if eff < 1:
        notes.append(f"times are roofline times / {eff:.3f} (calibration)")
    ceil = spec.ceilings(precision)
    return Projection(
        workload=workload, batch=batch, precision=precision, chip=spec.name, spec_path=spec.path,
        hypothetical=spec.hypothetical, peak_tflops=spec.peak_tflops[precision],
        bandwidth_gbps=spec.bandwidth_gbps, onchip_mib=spec.onchip_mib, ridge=ceil.ridge,
        calibration=cal, ops=projected, total_s=total_s,
        total_dram_only_s=total(peak, bandwidth, onchip=False),
        what_if={"2x_bandwidth": total(peak, 2 * bandwidth), "2x_compute": total(2 * peak, bandwidth)},
        compute_bound_share=compute_s / total_s if total_s else 0.0,
        memory_bound_share=memory_s / total_s if total_s else 0.0,
        notes=notes,
    )


def project(workload_name: str, hw_spec_path: str | Path, precision: str = "fp32", batch: int = 1,
            calibration: Any = None, workload_params: dict | None = None, device: Any = None,
            results_dir: str | Path = "results") -> Projection:
    """Project `workload_name` at `batch` onto the chip in `hw_spec_path` (a path, or the name of
    a shipped spec). `calibration`: see `resolve_calibration` (default: ideal roofline, 1.0)."""
    from chipbench.prepare import export_onnx
    from chipbench.workloads.base import get_workload

    spec = load_spec(resolve_spec_path(hw_spec_path))
    spec.peak_flops(precision)  # fail before exporting anything
    workload = get_workload(workload_name, **(workload_params or {}))
    ops = graph_work(export_onnx(workload, batch))
    cal = resolve_calibration(calibration, workload_name, batch, workload_params, device, results_dir)
    return project_ops(ops, spec, precision, cal, workload=workload_name, batch=batch)


# ---------------------------------------------------------------------------------------------
# Markdown


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.4f}"


def render_markdown(proj: Projection, top: int = 10) -> str:
    """A report section: the chip, the model, totals with the 2x what-ifs, the binding ops."""
    label = " (HYPOTHETICAL)" if proj.hypothetical else ""
    unit = "TOPS" if proj.precision == "int8" else "TFLOP/s"
    lines = [
        f"### Projection: {proj.workload} (batch {proj.batch}, {proj.precision}) on {proj.chip}{label}",
        "",
        f"Chip: {proj.peak_tflops:g} {unit} {proj.precision}, {proj.bandwidth_gbps:g} GB/s DRAM, "
        f"{proj.onchip_mib:g} MiB on chip; ridge {proj.ridge:.1f} FLOP/B (`{proj.spec_path}`).",
        f"Efficiency: {proj.calibration.factor:.3f}, {proj.calibration.source}.",
        "Model: per ONNX node max(FLOPs/peak, DRAM bytes/bandwidth) / efficiency, summed; "
        "activations of a node whose working set fits on chip stay there (its weights still come "
        "from DRAM); views are free; bytes scale with the precision from FP32.",
        "",
        "| case | projected ms | speed-up vs as specified |",
        "|---|---:|---:|",
        f"| as specified | {_ms(proj.total_s)} | 1.00x |",
        f"| every byte via DRAM (no on-chip reuse) | {_ms(proj.total_dram_only_s)} | "
        f"{proj.total_s / proj.total_dram_only_s if proj.total_dram_only_s else 0:.2f}x |",
    ]
    for key, text in (("2x_bandwidth", "2x bandwidth"), ("2x_compute", "2x compute")):
        t = proj.what_if[key]
        lines.append(f"| {text} | {_ms(t)} | {proj.total_s / t if t else 0:.2f}x |")
    lines += [
        "",
        f"{100 * proj.compute_bound_share:.0f}% of the projected time is in compute-bound ops, "
        f"{100 * proj.memory_bound_share:.0f}% in memory-bound ones: "
        + {"memory": "bandwidth binds this chip on this workload.",
           "compute": "compute binds this chip on this workload.",
           "balanced": "neither resource alone binds it."}[proj.binds],
        "",
        "| # | op | type | MFLOP | DRAM KB | on chip | bound | projected µs | % |",
        "|---:|---|---|---:|---:|---|---|---:|---:|",
    ]
    for k, o in enumerate(proj.binding(top), 1):
        lines.append(f"| {k} | `{o.name}` | {o.op_type} | {o.flops / 1e6:.3f} | {o.dram_bytes / 1e3:.1f} | "
                     f"{'yes' if o.fits_onchip else 'no'} | {o.bound} | {o.time_s * 1e6:.3f} | "
                     f"{100 * o.share:.1f} |")
    rest = sorted(proj.ops, key=lambda o: -o.time_s)[top:]
    if rest:
        lines.append(f"| | {len(rest)} more | | | | | | {sum(o.time_s for o in rest) * 1e6:.3f} | "
                     f"{100 * sum(o.share for o in rest):.1f} |")
    out = "\n".join(lines) + "\n"
    if proj.notes:
        out += "\n" + "\n".join(f"- {n}" for n in proj.notes) + "\n"
    return out
