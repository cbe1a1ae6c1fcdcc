"""Per-operator time breakdowns: the value objects, their place on the roofline, and Markdown.

A backend that can break an inference down by operator offers `Compiled.profile(inputs, runs)`
(ONNX Runtime's profiler in `backends/ort_profile.py`, TVM's per-PrimFunc timing in
`backends/tvm_profile.py`); `chipbench profile` runs it in an isolated cell and stores the
result as a record of kind "profile". Rows are what ran (an ORT node, a TVM PrimFunc), with
FLOPs and minimum bytes where they can be counted, so each can be placed on the roofline.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

# coarse families so ORT and TVM rows can be compared (first matching op type wins)
_CATEGORY = {
    "conv": ("conv", "Conv"),
    "matmul": ("matmul", "dense", "batch_matmul", "MatMul", "Gemm", "FusedGemm", "FusedMatMul",
               "MatMulNBits", "Attention", "MultiHeadAttention", "einsum"),
    "pool": ("pool", "Pool", "mean", "ReduceMean"),
    "norm": ("norm", "Normalization", "softmax", "Softmax"),
}


class OpProfileError(Exception):
    """The per-op profile could not be taken (one line)."""


@dataclass
class OpTime:
    """One operator (ORT node, TVM PrimFunc) of one inference, times in ms (median over runs)."""

    backend: str
    name: str  # ORT node name / TVM function symbol
    op_type: str  # what ran: ORT op_name (e.g. FusedConv) / Relax ops from the symbol (conv1d+add+relu)
    time_ms: float
    share: float = 0.0  # of the sum of all rows (0..1)
    calls: int = 1  # per inference
    flops: float | None = None  # per inference (all calls)
    bytes: float | None = None  # minimum bytes per inference: inputs read once, outputs written once
    intensity: float | None = None  # FLOP/byte
    gflops: float | None = None  # achieved
    gbps: float | None = None  # achieved, counting the minimum bytes
    bound_gflops: float | None = None  # roofline attainable at this intensity (with a device profile)
    pct_of_roofline: float | None = None  # achieved / attainable, %
    bound: str | None = None  # "compute" / "memory" (with a device profile)
    category: str = "other"  # conv / matmul / pool / norm / other
    covers: tuple[str, ...] = ()  # ONNX nodes this row stands for (ORT)
    onnx_op_types: tuple[str, ...] = ()  # their op types, in graph order (ORT)
    flops_source: str | None = None  # "onnx" (onnx_flops over covered nodes) / "tir" (estimate_tir_flops)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["covers"], d["onnx_op_types"] = list(self.covers), list(self.onnx_op_types)
        return d


@dataclass
class OpProfile:
    """A backend's per-op breakdown of one (workload, batch), with its end-to-end time."""

    workload: str
    backend: str
    batch: int
    runs: int
    threads: int
    e2e_ms: float  # median end-to-end time of one inference, measured alongside
    ops: list[OpTime]
    method: str
    notes: list[str] = field(default_factory=list)
    unattributed: list[str] = field(default_factory=list)  # ONNX nodes no row covers (folded away)
    ceilings: dict[str, float] | None = None  # the roofline the % refer to

    @property
    def ops_ms(self) -> float:
        return sum(o.time_ms for o in self.ops)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ops"] = [o.to_dict() for o in self.ops]
        d["ops_ms"] = self.ops_ms
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpProfile:
        """The inverse of `to_dict` (derived keys are dropped)."""
        known = {f.name for f in fields(cls)}
        ops = [OpTime(**{**o, "covers": tuple(o.get("covers", ())), "onnx_op_types": tuple(o.get("onnx_op_types", ()))})
               for o in data.get("ops", [])]
        return cls(**{k: v for k, v in data.items() if k in known and k != "ops"}, ops=ops)


def attach_roofline(prof: OpProfile | list[OpTime], device: Any, precision: str = "fp32") -> None:
    """Fill the roofline columns in place from a DeviceProfile (measured ceilings) or Ceilings."""
    from chipbench.roofline import Ceilings, place

    ceil = device if isinstance(device, Ceilings) else Ceilings.of(device, precision)
    ops = prof.ops if isinstance(prof, OpProfile) else prof
    for i, op in enumerate(ops):
        if op.flops and op.bytes and op.time_ms > 0:
            p = place(ceil, op.name, op.flops, op.bytes, op.time_ms / 1e3, op.op_type)
            ops[i] = replace(op, bound_gflops=p.bound_gflops, pct_of_roofline=p.pct_of_roofline,
                             bound=p.bound)
        elif op.flops == 0 and op.bytes and op.time_ms > 0:  # data movement: memory-bound by definition
            ops[i] = replace(op, bound="memory")
    if isinstance(prof, OpProfile):
        prof.ceilings = {"peak_gflops": ceil.peak_gflops, "bandwidth_gbps": ceil.bandwidth_gbps,
                         "ridge": ceil.ridge}


def roofline_points(prof: OpProfile | Sequence[OpTime], device: Any, precision: str = "fp32") -> list:
    """`chipbench.roofline.Point`s of the rows with FLOPs and bytes, for `roofline.plot`/`table`."""
    from chipbench.roofline import Ceilings, place

    ceil = device if isinstance(device, Ceilings) else Ceilings.of(device, precision)
    ops = prof.ops if isinstance(prof, OpProfile) else prof
    return [place(ceil, o.name, o.flops, o.bytes, o.time_ms / 1e3, o.op_type)
            for o in ops if o.flops and o.bytes and o.time_ms > 0]


def finish(ops: list[OpTime]) -> list[OpTime]:
    """Shares, derived rates and categories; slowest first (backends call it on their rows)."""
    total = sum(o.time_ms for o in ops) or 1.0
    out = []
    for o in ops:
        seconds = o.time_ms / 1e3
        intensity = o.flops / o.bytes if o.flops is not None and o.bytes else None
        gflops = o.flops / seconds / 1e9 if o.flops is not None and seconds > 0 else None
        gbps = o.bytes / seconds / 1e9 if o.bytes is not None and seconds > 0 else None
        types = (o.op_type, *o.onnx_op_types)
        out.append(replace(o, share=o.time_ms / total, intensity=intensity, gflops=gflops, gbps=gbps,
                           category=category(types)))
    return sorted(out, key=lambda o: -o.time_ms)


def category(op_types: Iterable[str]) -> str:
    for t in op_types:
        for cat, keys in _CATEGORY.items():
            if any(k in t for k in keys):
                return cat
    return "other"


def median(xs: Sequence[float]) -> float:
    """The median of `xs` (0.0 for no values): backends take it over a profile's runs."""
    return float(statistics.median(xs)) if xs else 0.0


# ---------------------------------------------------------------------------------------------
# Markdown


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def markdown_table(ops: Sequence[OpTime], top: int = 10) -> str:
    """The `top` slowest rows as a Markdown table (the rest summed in a last row)."""
    rows = sorted(ops, key=lambda o: -o.time_ms)
    lines = ["| # | op | type | calls | time ms | % time | MFLOP | MB | FLOP/B | GFLOP/s | bound | % of roofline |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for k, o in enumerate(rows[:top], 1):
        kind = o.op_type + (f" ({'+'.join(o.onnx_op_types)})" if o.onnx_op_types else "")
        lines.append(
            f"| {k} | `{o.name}` | {kind} | {o.calls} | {o.time_ms:.4f} | {100 * o.share:.1f} | "
            f"{_fmt(None if o.flops is None else o.flops / 1e6, '.3f')} | "
            f"{_fmt(None if o.bytes is None else o.bytes / 1e6, '.3f')} | {_fmt(o.intensity, '.2f')} | "
            f"{_fmt(o.gflops, '.2f')} | {o.bound or '–'} | {_fmt(o.pct_of_roofline, '.1f')} |")
    rest = rows[top:]
    if rest:
        lines.append(f"| | {len(rest)} more | | | {sum(o.time_ms for o in rest):.4f} | "
                     f"{100 * sum(o.share for o in rest):.1f} | | | | | | |")
    return "\n".join(lines) + "\n"


def render_markdown(prof: OpProfile, top: int = 10) -> str:
    """A report section: heading, method, end-to-end vs per-op sum, the top-k table, notes."""
    head = [f"### Per-op breakdown: {prof.workload} on {prof.backend} (batch {prof.batch})", "",
            f"Method: {prof.method}.", "",
            f"End-to-end {prof.e2e_ms:.3f} ms; {len(prof.ops)} ops sum to {prof.ops_ms:.3f} ms."]
    if prof.ceilings:
        c = prof.ceilings
        head.append(f"Roofline: {c['peak_gflops']:.1f} GFLOP/s, {c['bandwidth_gbps']:.1f} GB/s "
                    f"(ridge {c['ridge']:.2f} FLOP/B), measured on this machine.")
    by_cat: dict[str, float] = defaultdict(float)
    for o in prof.ops:
        by_cat[o.category] += o.share
    head.append("By family: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])) + ".")
    out = "\n".join(head) + "\n\n" + markdown_table(prof.ops, top)
    notes = list(prof.notes)
    if prof.unattributed:
        notes.append(f"ONNX nodes in no row (folded or eliminated by the runtime): {', '.join(prof.unattributed[:10])}"
                     + (" ..." if len(prof.unattributed) > 10 else ""))
    if notes:
        out += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    return out

