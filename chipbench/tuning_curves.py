"""What tuning bought, for the report: one row per tuned result (a record whose backend names
the backend it tunes, `details.untuned_backend`), set beside the untuned and ONNX Runtime
results of the same run (same workload, scenario, precision,
batch), and a plot of each database's tuning curve (latency against minutes of tuning)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from chipbench.record import RunRecord

FAIR_RATIO = 1.5  # tuned TVM within this factor of ONNX Runtime counts as a fair comparison
REFERENCE_BACKEND = "ort-cpu"  # the vendor runtime tuned results are set beside
RATIO_TICKS = (0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)


@dataclass
class TuningRow:
    workload: str
    scenario: str
    batch: int
    trials: int | None
    tuning_s: float | None
    search: str
    untuned_ms: float | None  # this run's tvm-llvm median, else the tuner's measurement
    tuned_ms: float
    ort_ms: float | None  # this run's ort-cpu median, else the tuner's measurement
    measured_here: bool  # both comparisons come from this run
    break_even: dict = field(default_factory=dict)
    curve: list[dict] = field(default_factory=list)  # trials, tuning_s, latency_ms
    tuner_ort_ms: float | None = None
    provenance: str = ""  # how the schedules were obtained: "tuned here", "transferred from llvm-znver4-2c"

    @property
    def vs_ort(self) -> float | None:
        return self.tuned_ms / self.ort_ms if self.ort_ms else None

    @property
    def fair(self) -> bool | None:
        return None if self.vs_ort is None else self.vs_ort <= FAIR_RATIO


def tuning_rows(records: list[RunRecord]) -> list[TuningRow]:
    from chipbench.tuning import break_even
    from chipbench.tuning.transfer import provenance_label

    def key(r: RunRecord) -> tuple:  # ratios only within one device
        return r.workload["name"], r.scenario["name"], r.precision, r.batch, r.device_id

    medians = {(r.backend["name"], *key(r)): r.latency.median
               for r in records if r.status == "ok" and r.latency}
    rows = []
    for r in records:
        d = r.backend.get("details") or {}
        # a tuned backend names the backend it tunes (tvm-llvm-tuned: tvm-llvm)
        if not d.get("untuned_backend") or r.status != "ok" or not r.latency:
            continue
        untuned = medians.get((d["untuned_backend"], *key(r)))
        ort = medians.get((REFERENCE_BACKEND, *key(r)))
        search = d.get("search") or {}
        row = TuningRow(
            workload=r.workload["name"], scenario=r.scenario["name"], batch=r.batch,
            trials=d.get("trials"), tuning_s=d.get("tuning_s"),
            search=" / ".join(str(v) for v in (search.get("cost_model"), search.get("strategy")) if v),
            untuned_ms=untuned if untuned is not None else d.get("tuner_untuned_ms"),
            tuned_ms=r.latency.median, ort_ms=ort if ort is not None else d.get("tuner_ort_ms"),
            measured_here=untuned is not None and ort is not None, curve=d.get("tuning_curve") or [],
            tuner_ort_ms=d.get("tuner_ort_ms"), provenance=provenance_label(r.tuning))
        row.break_even = break_even(row.untuned_ms, row.tuned_ms, row.tuning_s or 0.0, row.ort_ms) or {}
        rows.append(row)
    return sorted(rows, key=lambda row: (row.workload, row.scenario, row.batch))


def plot(rows: list[TuningRow], path: Path) -> list[Path]:
    """Latency relative to ONNX Runtime (as the tuner measured both) against minutes of
    tuning, one line per database; writes `path` as .png and .svg and returns both."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    from chipbench import plots

    fig, ax = plots.figure(8, 5)
    for row in rows:
        points = [p for p in row.curve if p.get("latency_ms") and p.get("tuning_s") is not None]
        if not points or not row.tuner_ort_ms:
            continue
        xs = [p["tuning_s"] / 60.0 for p in points]
        ys = [p["latency_ms"] / row.tuner_ort_ms for p in points]
        ax.plot(xs, ys, marker="o", ms=3, label=f"{row.workload} ({points[-1].get('trials')} trials)")
    ax.axhline(1.0, color="black", lw=1.5, label="ONNX Runtime")
    ax.axhline(FAIR_RATIO, color="grey", ls="--", lw=1, label=f"{FAIR_RATIO}× ONNX Runtime")
    ax.set(yscale="log", xlabel="minutes of MetaSchedule tuning", ylabel="TVM latency ÷ ONNX Runtime latency",
           title="What tuning buys: TVM latency against tuning time")
    low, high = ax.get_ylim()
    ax.set_yticks([t for t in RATIO_TICKS if low <= t <= high])
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{y:g}×"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return plots.save(fig, path)
