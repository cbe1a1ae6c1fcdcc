"""The roofline: where a kernel or an op sits against the device's ceilings.

attainable(AI) = min(peak FLOP/s, AI × bandwidth), AI = FLOPs / bytes. A point left of the
ridge (AI < peak / bandwidth) is memory-bound, right of it compute-bound; "% of roofline" is
achieved FLOP/s over attainable at its AI. Ceilings are the *measured* ones from
`chipbench.probe` (what a good library attains), not datasheet numbers, unless asked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from chipbench.probe import DeviceProfile


@dataclass(frozen=True)
class Ceilings:
    peak_gflops: float
    bandwidth_gbps: float

    @property
    def ridge(self) -> float:
        """FLOP/byte where the memory slope meets the compute roof."""
        return self.peak_gflops / self.bandwidth_gbps

    def attainable(self, intensity: float) -> float:
        return min(self.peak_gflops, intensity * self.bandwidth_gbps)

    @classmethod
    def of(cls, profile: DeviceProfile, precision: str = "fp32", theoretical: bool = False) -> Ceilings:
        peaks = profile.theoretical_gflops if theoretical else profile.peak_gflops
        return cls(peaks[precision], profile.bandwidth_gbps)


Roof = DeviceProfile | Ceilings  # a profile means its measured fp32 ceilings


def ceilings(roof: Roof) -> Ceilings:
    return roof if isinstance(roof, Ceilings) else Ceilings.of(roof)


@dataclass(frozen=True)
class Point:
    label: str
    flops: float
    bytes: float
    seconds: float
    op_type: str = ""
    intensity: float = 0.0  # FLOP/byte
    gflops: float = 0.0  # achieved
    gbps: float = 0.0  # achieved, counting the minimum bytes
    bound_gflops: float = 0.0  # attainable at this intensity
    pct_of_roofline: float = 0.0
    bound: str = ""  # "compute" or "memory"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def place(roof: Roof, label: str, flops: float, nbytes: float, seconds: float, op_type: str = "") -> Point:
    """One (flops, bytes, seconds) measurement against the ceilings."""
    ceil = ceilings(roof)
    ai = flops / nbytes if nbytes else float("inf")
    gflops = flops / seconds / 1e9
    bound = ceil.attainable(ai)
    return Point(label, flops, nbytes, seconds, op_type, ai, gflops, nbytes / seconds / 1e9, bound,
                 100.0 * gflops / bound if bound else 0.0, "compute" if ai >= ceil.ridge else "memory")


def _seconds(op: Mapping[str, Any]) -> float:
    if "seconds" in op:
        return float(op["seconds"])
    return float(op["time_us"]) / 1e6  # ONNX Runtime's profiler reports "dur" in microseconds


def place_ops(roof: Roof, ops: Iterable[Mapping[str, Any]]) -> list[Point]:
    """A per-op profile (dicts with name, op_type, seconds or time_us, flops, bytes) placed op by
    op; ops with no time or no bytes (fused away, bookkeeping) are left out."""
    points = []
    for op in ops:
        seconds = _seconds(op)
        if seconds > 0 and op["bytes"] > 0:
            points.append(place(roof, op["name"], op["flops"], op["bytes"], seconds, op.get("op_type", "")))
    return points


def table(points: Iterable[Point], roof: Roof | None = None) -> str:
    """A Markdown table, one row per point, slowest first."""
    rows = sorted(points, key=lambda p: -p.seconds)
    total = sum(p.seconds for p in rows) or 1.0
    lines = []
    if roof is not None:
        ceil = ceilings(roof)
        lines.append(f"Ceilings: {ceil.peak_gflops:.1f} GFLOP/s, {ceil.bandwidth_gbps:.1f} GB/s, "
                     f"ridge {ceil.ridge:.2f} FLOP/B\n")
    lines += ["| op | type | time ms | % time | GFLOP | MB | FLOP/B | GFLOP/s | GB/s | bound | % of roofline |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for p in rows:
        lines.append(
            f"| {p.label} | {p.op_type} | {p.seconds * 1e3:.3f} | {100 * p.seconds / total:.1f} | "
            f"{p.flops / 1e9:.3f} | {p.bytes / 1e6:.2f} | {p.intensity:.2f} | {p.gflops:.1f} | "
            f"{p.gbps:.1f} | {p.bound} | {p.pct_of_roofline:.1f} |")
    return "\n".join(lines) + "\n"


def plot(roof: Roof, points: list[Point], path: Path, title: str = "Roofline",
         label_points: bool = True) -> list[Path]:
    """Log-log roofline with labelled points; writes `path` as .png and .svg, returns both."""
    from chipbench import plots

    ceil = ceilings(roof)
    ais = [p.intensity for p in points if p.intensity > 0] or [ceil.ridge]
    lo, hi = min(min(ais), ceil.ridge) / 4, max(max(ais), ceil.ridge) * 4
    fig, ax = plots.figure(8, 5.5)
    xs = [lo, ceil.ridge, hi]
    ax.plot(xs, [ceil.attainable(x) for x in xs], color="black", lw=2,
            label=f"{ceil.peak_gflops:.0f} GFLOP/s, {ceil.bandwidth_gbps:.1f} GB/s")
    ax.axvline(ceil.ridge, color="grey", ls=":", lw=1)
    for kind, colour in (("compute", "tab:blue"), ("memory", "tab:orange")):
        sel = [p for p in points if p.bound == kind]
        ax.scatter([p.intensity for p in sel], [p.gflops for p in sel], color=colour, s=24,
                   label=f"{kind}-bound", zorder=3)
    if label_points:
        for p in points:
            ax.annotate(p.label, (p.intensity, p.gflops), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP/byte)",
           ylabel="GFLOP/s", title=title, xlim=(lo, hi))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return plots.save(fig, path)


def benchmark_points(roof: Roof, bench_json: Path) -> dict[str, list[Point]]:
    """Kernel benchmark results (pytest-benchmark JSON from `pytest kernels --benchmark-only`)
    placed per backend: labelled by case, timed by the median."""
    import json

    points: dict[str, list[Point]] = {}
    for b in json.loads(Path(bench_json).read_text())["benchmarks"]:
        info = b["extra_info"]
        point = place(roof, b["group"] or b["name"], info["flops"], info["bytes"], b["stats"]["median"], info["kernel"])
        points.setdefault(info["backend"], []).append(point)
    return points
