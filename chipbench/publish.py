"""`chipbench publish`: what a reviewer needs to accept a result without re-running it.

The package (a new or empty folder):

    report.md, report.html   the report, as `chipbench report` writes it, with its plots in figures/
    results.csv              one row per metric of every record the report shows (RESULTS_COLUMNS)
    system.json              the machine and software the records were measured on (SYSTEM_FIELDS)
    records/<id>.json        every record of the store, history included, byte for byte
    verify.log               `chipbench verify` of the results dir and of the published report.md
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from chipbench.record import RunRecord
from chipbench.report import most_common
from chipbench.store import ResultsStore

RESULTS_COLUMNS = ("workload", "scenario", "backend", "device", "precision", "batch", "metric", "value", "unit",
                   "verdict", "record_id")
SYSTEM_FIELDS = ("cpu", "accelerators", "memory_gib", "os", "driver", "python", "libraries", "git_commits",
                 "hosts", "records")


def metric_rows(rec: RunRecord) -> list[dict[str, Any]]:
    """The CSV rows of one record, one per metric: p50, p90, p99 (ms per query), throughput
    (samples/s or tokens/s), fidelity_rel_l2 (relative L2 error against the FP32 reference,
    unitless), and the task metric under its own name (unit as the workload states none: "").
    A record that was not measured gives one row with no metric, its status as the verdict."""
    base = {"workload": rec.workload.get("name"), "scenario": rec.scenario.get("name"), "backend": rec.backend.get("name"),
            "device": rec.device_label, "precision": rec.precision, "batch": rec.batch,
            "verdict": rec.verdict or rec.status.upper(), "record_id": rec.id}
    metrics: list[tuple[str, Any, str]] = []
    if rec.latency is not None:
        metrics += [("p50", rec.latency.median, "ms"), ("p90", rec.latency.p90, "ms"), ("p99", rec.latency.p99, "ms")]
    if rec.throughput is not None:
        metrics.append(("throughput", rec.throughput.value, rec.throughput.unit))
    if rec.accuracy is not None and rec.accuracy.fidelity.rel_l2 is not None:
        metrics.append(("fidelity_rel_l2", rec.accuracy.fidelity.rel_l2, "1"))
    task = rec.accuracy.task if rec.accuracy else None
    if task and task.get("value") is not None:
        metrics.append((str(task.get("metric")), task["value"], ""))
    if not metrics:
        return [{**base, "metric": "", "value": "", "unit": ""}]
    return [{**base, "metric": m, "value": repr(float(v)), "unit": u} for m, v, u in metrics]


def results_csv(records: list[RunRecord]) -> str:
    """`metric_rows` of benchmark records (per-operator profiles have their own report section)
    as CSV text with the RESULTS_COLUMNS header."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULTS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for rec in records:
        if rec.kind == "run":
            writer.writerows(metric_rows(rec))
    return buf.getvalue()


def system_description(records: list[RunRecord]) -> dict[str, Any]:
    """The machine and software of `records` (their provenance; chipbench.machine names the
    fields) with fixed keys (SYSTEM_FIELDS): cpu {model, count (usable cores), physical_cores,
    arch, isa}, accelerators [{model, count, memory, driver}] (nvidia-smi's name, memory.total
    and driver_version), memory_gib, os, driver (the GPU driver versions, None without a GPU),
    python, libraries {name: version}, git_commits, hosts, and records (how many records
    were measured on each host). Where records come from several machines, the most common one
    is described and `hosts` lists them all. ValueError when there are no records."""
    if not records:
        raise ValueError("no records to describe")
    machine = most_common(r.provenance.get("machine") or {} for r in records)
    libraries = most_common(r.provenance.get("libraries") or {} for r in records)
    gpus = Counter(machine.get("gpus") or [])
    accelerators = []
    for text, count in gpus.items():
        parts = [p.strip() for p in text.split(",")]
        accelerators.append({"model": parts[0], "count": count, "memory": parts[1] if len(parts) > 1 else None,
                             "driver": parts[2] if len(parts) > 2 else None})
    drivers = sorted({a["driver"] for a in accelerators if a["driver"]})
    hosts = Counter(str((r.provenance.get("machine") or {}).get("hostname")) for r in records)
    return {
        "cpu": {"model": machine.get("cpu_model"), "count": machine.get("cores"),
                "physical_cores": machine.get("physical_cores"), "arch": machine.get("arch"),
                "isa": machine.get("isa") or []},
        "accelerators": accelerators,
        "memory_gib": machine.get("memory_gib"),
        "os": machine.get("os"),
        "driver": ", ".join(drivers) or None,
        "python": machine.get("python"),
        "libraries": libraries,
        "git_commits": sorted({str(r.provenance.get("git_commit")) for r in records}),
        "hosts": sorted(hosts),
        "records": dict(sorted(hosts.items())),
    }


def publish(store: ResultsStore, out: Path) -> list[Path]:
    """Write the package (module doc) but verify.log into `out`, which must be new or empty.
    Returns the files written. StoreError when the store cannot be read, ValueError when it
    holds no records, OSError when `out` cannot be written."""
    from chipbench.paths import atomic_write_text
    from chipbench.report_check import render_reports

    latest = [r for r in store.latest() if r.kind != "profile"]
    if not latest:
        raise ValueError(f"no results in {store.root}/")
    out.mkdir(parents=True, exist_ok=True)
    figures = out / "figures"
    written = render_reports(store, out / "report.md", out / "report.html", figures)
    if figures.is_dir() and not any(figures.iterdir()):
        figures.rmdir()
    csv_path, system_path = out / "results.csv", out / "system.json"
    atomic_write_text(csv_path, results_csv(latest))
    atomic_write_text(system_path, json.dumps(system_description(latest), indent=1, sort_keys=True) + "\n")
    records_dir = out / "records"
    records_dir.mkdir(exist_ok=True)
    for path in sorted(store.runs_dir.glob("*.json")):
        shutil.copyfile(path, records_dir / path.name)
    return [*written, csv_path, system_path, records_dir]
