"""Reports: Markdown and self-contained HTML from the results store.

One table per (scenario, precision): a row per workload, a column group per backend.
Every value that came from a user (names, reasons, paths) is escaped.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from chipbench.fit import fit_rows
from chipbench.measures import Resources
from chipbench.paths import atomic_write_text
from chipbench.record import RunRecord
from chipbench.report_summary import REFERENCE_STACK
from chipbench.stats import LatencyStats
from chipbench.tuning_curves import FAIR_RATIO

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|~])")


def md_escape(value: object) -> str:
    """Escape Markdown (and inline HTML) syntax; newlines would break a table row."""
    return _MD_SPECIAL.sub(r"\\\1", str(value)).replace("\n", " ")


@dataclass
class Table:
    """One (device, scenario, precision): a row per (workload, backend), the figures as columns
    (so the table is as wide as its figures, however many backends ran)."""

    scenario: str
    precision: str
    batch_note: str
    backends: list[str]
    rows: list[RunRecord] = field(default_factory=list)
    device: str = "cpu"  # RunRecord.device_label of every record in the table


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def fmt_num(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}g}"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def p99_summary(latency: LatencyStats) -> str:
    """p99 with its early-stopping bound, "1.23 ms (≤ 1.31 at 99 %)", or "not estimable (n = 20 <
    662)" (chipbench.tails); a record without tails (older ones) shows its bare p99."""
    from chipbench.tails import describe

    tail = latency.tails.get("p99")
    return describe(tail) if tail else fmt_ms(latency.p99)


def cell_summary(rec: RunRecord | None) -> dict[str, str]:
    """The few strings a table cell shows."""
    if rec is None:
        return {"p50": "", "p99": "", "tput": "", "fid": "", "verdict": "not run", "untuned": ""}
    if rec.status != "ok":
        return {"p50": "–", "p99": "–", "tput": "–", "fid": "–", "verdict": rec.status.upper(), "untuned": ""}
    untuned = "untuned" if (rec.backend.get("pipeline") or "").endswith("(untuned)") else ""
    return {
        "p50": fmt_ms(rec.latency.median),
        "p99": p99_summary(rec.latency),
        "tput": fmt_num(rec.throughput.value, 4),
        "fid": fmt_num(rec.accuracy.fidelity.rel_l2 if rec.accuracy else None, 2),
        "verdict": (rec.verdict or "") + issuer_verdict(rec),
        "untuned": untuned,
    }


def tuning_cells(row) -> dict[str, str]:
    """One tuning_curves.TuningRow as the report's table shows it."""
    b = row.break_even
    return {
        "workload": row.workload + ("" if row.measured_here else "*"),
        "trials": f"{row.trials:,}" if row.trials is not None else "–",
        "minutes": fmt_num(row.tuning_s / 60.0) if row.tuning_s is not None else "–",
        "untuned": fmt_ms(row.untuned_ms), "tuned": fmt_ms(row.tuned_ms), "ort": fmt_ms(row.ort_ms),
        "speedup": f"{fmt_num(b['speedup'])}×" if b.get("speedup") else "–",
        "vs_ort": f"{fmt_num(row.vs_ort)}×" if row.vs_ort else "–",
        "fair": "–" if row.fair is None else ("yes" if row.fair else "no"),
        "break_even": f"{b['inferences']:,}" if b.get("inferences") else ("never" if b else "–"),
        "schedules": row.provenance or "–",
    }


def is_kernel(rec: RunRecord) -> bool:
    return rec.workload.get("kind") == "kernel"


def build_tables(records: list[RunRecord]) -> list[Table]:
    """A table per (device, scenario, precision): figures are set side by side only when they
    were measured on the same device."""
    # kernels have their own section, and so do generation cells (TTFT, TPOT, tokens/s)
    records = [r for r in records if not is_kernel(r) and not getattr(r, "generation", None)]
    tables: dict[tuple[str, str, str], Table] = {}
    for rec in records:
        key = (rec.device_label, rec.scenario["name"], rec.precision)
        if key not in tables:
            tables[key] = Table(rec.scenario["name"], rec.precision, "", [], device=rec.device_label)
    for (device, scenario, precision), table in tables.items():
        group = [r for r in records if (r.device_label, r.scenario["name"], r.precision) == (device, scenario, precision)]
        table.backends = list(dict.fromkeys(r.backend["name"] for r in group))
        batches = sorted({r.batch for r in group})
        table.batch_note = "batch " + ", ".join(map(str, batches))
        for workload in dict.fromkeys(r.workload["name"] for r in group):
            by_backend = {r.backend["name"]: r for r in group if r.workload["name"] == workload}
            table.rows += [by_backend[b] for b in table.backends if b in by_backend]
    return list(tables.values())


def issuer_verdict(rec: RunRecord) -> str:
    """" · LoadGen VALID" (or the fixed-rate issuer's verdict) where the scenario's issuer gave
    one, with its first reason when INVALID; "" otherwise (the device clock, older records)."""
    lg = (rec.scenario or {}).get("loadgen") or {}
    if not lg.get("result"):
        return ""
    who = "LoadGen" if lg.get("issuer") == "loadgen" else "issuer"
    reason = f": {lg['reasons'][0]}" if lg["result"] != "VALID" and lg.get("reasons") else ""
    return f" · {who} {lg['result']}{reason[:80]}"


@dataclass
class PrecisionRow:
    workload: str
    backend: str
    precision: str
    p50: float | None
    speedup: float | None  # fp32 p50 / this p50, same backend, workload and scenario
    rel_l2: float | None
    task: str
    verdict: str
    task_metric: str | None = None
    task_value: float | None = None

    @property
    def accuracy_label(self) -> str:
        return self.task_metric or "rel L2 to FP32"

    @property
    def accuracy_value(self) -> float | None:
        """The task metric where the workload has one, else the fidelity (rel L2) to FP32."""
        return self.task_value if self.task_metric else self.rel_l2


def precision_rows(records: list[RunRecord]) -> list[PrecisionRow]:
    """What each precision buys in speed and costs in accuracy, per (workload, backend)."""
    by_key: dict[tuple, dict[str, RunRecord]] = {}
    for r in records:
        by_key.setdefault((r.workload["name"], r.backend["name"], r.scenario["name"], r.device_id), {})[r.precision] = r
    rows = []
    for (workload, backend, _, _), precs in sorted(by_key.items()):
        if len(precs) < 2:
            continue
        base = precs.get("fp32")
        base_p50 = base.latency.median if base and base.status == "ok" and base.latency else None
        for precision in ("fp32", "fp16", "bf16", "int8"):
            r = precs.get(precision)
            if r is None:
                continue
            p50 = r.latency.median if r.status == "ok" and r.latency else None
            task = (r.accuracy.task if r.accuracy else None) or {}
            rows.append(PrecisionRow(
                workload, backend, precision, p50,
                base_p50 / p50 if base_p50 and p50 else None,
                r.accuracy.fidelity.rel_l2 if r.accuracy else None,
                task_summary(r), r.verdict or r.status.upper(), task.get("metric"), task.get("value")))
    return rows


def fit_summary(rows: list, workload: str) -> str:
    """The deployment-fit verdicts (chipbench.fit.FitRow) of a workload's requirements, one
    phrase each, e.g. "camera-line: FITS on ort-cpu fp32"; "–" when none was judged."""
    mine = [r for r in rows if r.workload == workload]
    return "; ".join(f"{r.requirement}: {r.verdict} on {r.stack}" for r in mine) or "–"


def speedup_text(row) -> str:
    """A summary row's speed-up over the reference stack: "2.03× (2.01–2.04)", "1 (the
    reference)", or why there is none."""
    if row.best is None:
        return "–"
    if row.reference is None:
        return "reference not measured VALID or NOISY here"
    s = row.speedup
    if row.reference.id == row.best.id:
        return "1 (it is the reference)"
    interval = f" ({s.low:.2f}–{s.high:.2f})" if s.low is not None else " (no raw samples: no interval)"
    noisy = " (reference NOISY)" if row.reference.verdict == "NOISY" else ""
    return f"{s.estimate:.2f}×{interval}{noisy}"


def compile_summary(r: RunRecord) -> str:
    """Seconds the cell spent compiling (or loading) its model; where the library came from the
    build cache (backends/tvm_build_cache.py), what the original build took beside it."""
    cached = (r.backend.get("details") or {}).get("build_cache") or {}
    shown = fmt_num(r.compile.seconds)
    if cached.get("hit"):
        return f"{shown} (library cached; built in {fmt_num(cached.get('build_s'))})"
    return shown


def energy_summary(r: RunRecord) -> str:
    """Measured joules per inference and average watts (chipbench.energy), or "–"."""
    if not r.energy:
        return "–"
    return f"{fmt_num(r.energy['joules_per_inference'])} J, {fmt_num(r.energy['avg_watts'])} W"


def resource_cells(r: RunRecord) -> dict[str, str]:
    """The record's `resources` (chipbench.resources) as the report's table shows them."""
    res = r.resources or Resources()
    threads = res.threads or {}
    load = res.machine_load or {}

    def others(when: str) -> str:
        sample = load.get(when)
        return "–" if not sample else fmt_num(sample.get("others_cores"), 2)

    first = res.first_inference_s
    return {
        "rss": fmt_bytes(res.peak_rss_bytes),
        "busy": fmt_num(res.cpu.cores_busy if res.cpu else None),
        "util": f"{res.cpu.utilisation * 100:.0f} %" if res.cpu else "–",
        "load": fmt_num(res.load_s),
        "first": fmt_ms(first * 1e3 if first is not None else None),
        "threads": "/".join("–" if threads.get(k) is None else str(threads.get(k))
                            for k in ("requested", "backend", "process")),
        "cpus": (res.affinity or {}).get("cpus") or "–",
        "others": f"{others('start')} / {others('end')}" if load else "not measured",
    }


def task_summary(r: RunRecord) -> str:
    task = r.accuracy.task if r.accuracy else None
    if not task:
        return "–"
    return f"{task['metric']} {task['value']:.4g} (FP32 {task['reference']:.4g}, n={task['samples']})"


def coverage_matrix(records: list[RunRecord]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """ONNX operators × backends: ✓ where it ran everywhere it appeared, ✗ naming the workloads
    where the backend could not run it, · where the backend stopped before reaching it."""
    backends: list[str] = []
    cells: dict[str, dict[str, dict[str, set[str]]]] = {}
    for r in records:
        if not r.coverage:
            continue
        b = r.backend["name"]
        if b not in backends:
            backends.append(b)
        for op, status in r.coverage["status"].items():
            cells.setdefault(op, {}).setdefault(b, {}).setdefault(status, set()).add(r.workload["name"])
    rows = []
    for op in sorted(cells):
        row = []
        for b in backends:
            seen = cells[op].get(b, {})
            if not seen:
                row.append("")
            elif "unsupported" in seen or "failed" in seen:
                bad = sorted(seen.get("unsupported", set()) | seen.get("failed", set()))
                row.append("✗ " + ", ".join(bad))
            elif "ran" in seen:
                row.append("✓" if "not reached" not in seen else "✓ (· " + ", ".join(sorted(seen["not reached"])) + ")")
            else:
                row.append("·")
        rows.append((op, row))
    return backends, rows


def environment(records: list[RunRecord]) -> dict[str, str]:
    """The machine and software most records were measured with (differences are listed per run)."""
    if not records:
        return {}
    m = most_common(r.provenance["machine"] for r in records)
    libs = most_common(r.provenance["libraries"] for r in records)
    env = {
        "CPU": f"{m['cpu_model']} ({m['cores']} cores, {m.get('arch', '')})",
        "ISA": " ".join(m["isa"]) or "–",
        "Memory": f"{m['memory_gib']} GiB",
        "OS": m["os"],
        "GPUs": ", ".join(m.get("gpus") or []) or "none",
        "Libraries": ", ".join(f"{k} {v}" for k, v in sorted(libs.items())),
        "Git commits": ", ".join(sorted({str(r.provenance.get("git_commit")) for r in records})),
    }
    return env


def environment_line(records: list[RunRecord]) -> str:
    """The environment in one line, as the first screen shows it: CPU, cores, memory, OS and
    the versions of the runtimes measured."""
    if not records:
        return ""
    m = most_common(r.provenance["machine"] for r in records)
    libs = most_common(r.provenance["libraries"] for r in records)
    for r in records:  # a backend's own runtime (e.g. openvino) is in its versions, not the libraries
        libs.update({k: v for k, v in (r.backend.get("versions") or {}).items() if k not in libs})
    shown = ", ".join(f"{k} {v}" for k, v in sorted(libs.items()) if k in RUNTIME_LIBRARIES)
    gpus = f", {', '.join(m['gpus'])}" if m.get("gpus") else ""
    return f"{m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}{gpus}; {shown}"


RUNTIME_LIBRARIES = ("onnxruntime", "openvino", "torch", "apache-tvm", "onnx")


def most_common(dicts) -> dict:
    """The dict that occurs most often among `dicts` (compared as sorted JSON): the machine or
    library versions most records were measured with."""
    text = Counter(json.dumps(d, sort_keys=True) for d in dicts).most_common(1)[0][0]
    return json.loads(text)


@dataclass
class Extras:
    """What the report shows beside the records: ceilings, roofline, per-op profiles,
    projections, tuning curves, and the plots (name -> PNG) drawn for them."""

    device: dict | None = None
    images: dict[str, Path] = field(default_factory=dict)
    tuning: list = field(default_factory=list)  # tuning_curves.TuningRow
    points: list = field(default_factory=list)  # (record, roofline Point)
    profiles: list[dict] = field(default_factory=list)
    projections: list[str] = field(default_factory=list)
    summary: list = field(default_factory=list)  # report_summary.SummaryRow, the first screen

    def point_of(self, rec: RunRecord):
        return next((p for r, p in self.points if r.id == rec.id), None)


def gather_extras(records: list[RunRecord], results_dir: Path | None, profiles: list[RunRecord] = ()) -> Extras:
    """Ceilings, roofline points and plots, tuning curves, projections, and the per-operator
    profiles of the `profiles` records (placed on the roofline when the ceilings are known)."""
    if results_dir is None:
        return Extras()
    from chipbench import tuning_curves
    from chipbench.opprofile import OpProfile, attach_roofline
    from chipbench.probe import ceilings_lookup, load_profile
    from chipbench.roofline import place, plot

    extras = Extras(tuning=tuning_curves.tuning_rows(records))
    add_summary_and_plots(extras, [r for r in records if not is_kernel(r)], results_dir)
    if any(row.curve for row in extras.tuning):
        extras.images["tuning"] = tuning_curves.plot(extras.tuning, results_dir / "tuning-curves")[0]
    for path in sorted((results_dir / "projections").glob("*.md")):
        extras.projections.append(path.read_text())
    device = load_profile(results_dir)
    ceilings_of = ceilings_lookup(results_dir)
    for rec in profiles:
        if rec.status == "ok" and rec.profile:
            prof = OpProfile.from_dict(rec.profile)
            roof = ceilings_of(rec.provenance.get("device"))
            if roof is not None:
                attach_roofline(prof, roof, rec.precision)
            extras.profiles.append({**prof.to_dict(), "device": rec.device_label})
    if device is not None:
        extras.device = {"peaks": device.peak_gflops, "bandwidth": device.bandwidth_gbps,
                         "theoretical": device.theoretical_gflops, "measured_at": device.measured_at,
                         "quick": device.quick}
    roofs: dict[str, tuple] = {}  # profile key -> (profile, its points): a GPU's records on its own ceilings
    for r in records:
        if r.status == "ok" and r.work and r.work.get("flops") and r.precision == "fp32":
            roof = ceilings_of(r.provenance.get("device"))
            if roof is None:
                continue
            label = f"{r.workload['name']} {r.backend['name']}" + ("" if r.batch == 1 else f" b{r.batch}")
            label += "" if device is not None and roof.key == device.key else f" @ {roof.machine.cpu}"
            seconds = r.latency.median / 1e3
            point = place(roof, label, r.work["flops"], r.work["bytes"], seconds)
            extras.points.append((r, point))
            roofs.setdefault(roof.key, (roof, []))[1].append(point)
    for key, (roof, points) in roofs.items():
        name = "roofline" if device is not None and key == device.key else f"roofline-{key}"
        unit = "cores" if roof.machine.kind == "cpu" else "SMs"
        out = plot(roof, points, results_dir / name, title=f"Roofline: {roof.machine.cpu} ({roof.machine.cores} {unit})")
        extras.images[name] = out[0]
    return extras


def add_summary_and_plots(extras: Extras, records: list[RunRecord], results_dir: Path) -> None:
    """The first screen's rows (chipbench.report_summary) and the plots drawn from the raw
    samples: latency distributions of the single-stream cells, speed against accuracy of the
    precision sweep."""
    from chipbench import report_plots
    from chipbench.report_summary import summary_rows
    from chipbench.store import ResultsStore, StoreError

    store = ResultsStore(results_dir)
    decoded: dict[str, object] = {}  # record id -> its raw samples (read from its JSON file once)

    def samples_of(rec: RunRecord):
        if rec.id not in decoded:
            try:
                decoded[rec.id] = store.samples(rec)
            except StoreError:
                decoded[rec.id] = None
        return decoded[rec.id]

    extras.summary = summary_rows(records, samples_of)
    curves: dict[str, list] = {}
    for row in extras.summary:
        for r in row.records:
            ms = samples_of(r)
            if ms is not None:
                curves.setdefault(row.workload, []).append((f"{r.backend['name']} {r.precision}", ms * 1e3))
    if curves:
        extras.images["latency"] = report_plots.latency_distributions(curves, results_dir / "latency-distributions")[0]
    sweep = {}
    for p in precision_rows(records):
        if p.p50 is not None and p.accuracy_value is not None:
            sweep.setdefault(p.workload, (p.accuracy_label, []))[1].append((f"{p.backend} {p.precision}", p.p50,
                                                                            p.accuracy_value))
    sweep = {w: v for w, v in sweep.items() if len(v[1]) > 1}
    if sweep:
        extras.images["speed_accuracy"] = report_plots.speed_accuracy(sweep, results_dir / "speed-accuracy")[0]


def render(records: list[RunRecord], fmt: str, title: str = "chipbench report",
           extras: Extras | None = None, images: dict[str, str] | None = None, conformance=None,
           fits: list[RunRecord] = ()) -> str:
    """The report as `fmt` ("md" or "html"); `conformance` is the scoreboard of the stored
    conformance runs (chipbench.conformance.scoreboard.Scoreboard) or None, `fits` the
    deployment-fit records (kind "fit", chipbench.fit)."""
    env = Environment(
        loader=PackageLoader("chipbench", "templates"),
        # templates are named report.<fmt>.j2: escape by the format, not the last extension
        autoescape=select_autoescape(enabled_extensions=("html.j2", "html"), default_for_string=False),
        trim_blocks=True, lstrip_blocks=True,
    )
    env.filters.update(md=md_escape, ms=fmt_ms, num=fmt_num, bytes=fmt_bytes)
    template = env.get_template(f"report.{fmt}.j2")
    ok = [r for r in records if r.status == "ok"]
    return template.render(
        title=title,
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        tables=build_tables(records),
        environment_line=environment_line(records),
        speedup_text=speedup_text, reference_stack=" ".join(REFERENCE_STACK), fit_summary=fit_summary,
        summary=cell_summary,
        environment=environment(records),
        problems=[r for r in records if r.status != "ok" or r.verdict in ("INVALID", "NOISY")],
        runs=sorted(ok, key=lambda r: (r.scenario["name"], r.precision, r.workload["name"], r.backend["name"])),
        untuned=any(cell_summary(r)["untuned"] for r in ok),
        precision_rows=precision_rows([r for r in records if not is_kernel(r)]),
        kernels=sorted((r for r in records if is_kernel(r)), key=lambda r: (r.workload["name"], r.backend["name"])),
        extras=extras or Extras(),
        images=images or {},
        fair_ratio=FAIR_RATIO,
        tuning_cells=tuning_cells,
        coverage=coverage_matrix(records),
        task_summary=task_summary,
        energy_summary=energy_summary, compile_summary=compile_summary,
        resource_cells=resource_cells,
        counts=Counter(r.status for r in records),
        generation=_generation(records),
        int8_findings=_int8_findings(records),
        conformance=conformance,
        fit_rows=fit_rows(list(fits)),
    )


def _generation(records: list[RunRecord]) -> dict:
    from chipbench.report_generation import generation_rows, prompt_lengths

    rows = generation_rows(records)
    return {"rows": rows, "lengths": prompt_lengths(rows)}


def _int8_findings(records: list[RunRecord]) -> list:
    from chipbench.report_int8 import int8_findings

    return int8_findings([r for r in records if not is_kernel(r)])


def write_reports(records: list[RunRecord], md_path: Path | None, html_path: Path | None,
                  results_dir: Path | None = None) -> list[Path]:
    """Markdown and self-contained HTML reports of `records` (benchmarks and per-op profiles)."""
    profiles = [r for r in records if r.kind == "profile"]
    fits = [r for r in records if r.kind == "fit"]  # deployment verdicts: their own section (chipbench.fit)
    records = [r for r in records if r.kind not in ("profile", "fit")]
    extras = gather_extras(records, results_dir, profiles)
    board = conformance_board(results_dir)
    written = []
    if md_path is not None:
        refs = {name: os.path.relpath(png, md_path.parent) for name, png in extras.images.items()}
        written.append(_write(md_path, render(records, "md", extras=extras, images=refs, conformance=board, fits=fits)))
    if html_path is not None:  # self-contained: the plots travel inside the page
        refs = {name: "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
                for name, png in extras.images.items()}
        written.append(_write(html_path, render(records, "html", extras=extras, images=refs, conformance=board,
                                                fits=fits)))
    return written


def conformance_board(results_dir: Path | None):
    """The scoreboard of the conformance runs stored under `results_dir`, or None."""
    if results_dir is None:
        return None
    from chipbench.conformance import document, scoreboard

    return scoreboard.build(document.documents(results_dir))


def _write(path: Path, text: str) -> Path:
    """Atomically: a report that cannot be written whole leaves the previous one as it was."""
    atomic_write_text(path, text)
    return path
