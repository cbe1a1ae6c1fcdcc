"""Run one cell in this process: prepare, compile, check accuracy, measure, make a RunRecord.

Every failure that Python can catch becomes a record with a one-line reason; the runner
(chipbench.runner) covers the rest (crash, hang, out-of-memory) by running this in a subprocess.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from chipbench.accuracy import check, fidelity
from chipbench.backends.base import Compiled, CompileSpec, Unsupported, get_backend
from chipbench.byo import ModelError, prepare_model
from chipbench.machine import git_commit, library_versions, machine_info
from chipbench.paths import atomic_write_text
from chipbench.prepare import PrepareError, Prepared, prepare_workload
from chipbench.record import RunRecord
from chipbench.scenarios import batch_for, measure
from chipbench.stats import LatencyStats
from chipbench.suite import Cell
from chipbench.workloads.base import DEFAULT_TOLERANCES, Tolerance, get_workload


def one_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:400]


def base_record(cell: Cell, status: str, reason: str | None = None, **extra) -> RunRecord:
    """A record that carries the cell's identity and provenance, whatever became of it."""
    workload = describe_workload(cell)
    return RunRecord(
        workload=workload,
        backend=extra.pop("backend", {"name": cell.backend, "versions": {}}),
        precision=cell.precision,
        batch=batch_for(cell.scenario, cell.batch, cell.settings),
        scenario={"name": cell.scenario, "settings": cell.settings.to_dict()},
        status=status,
        reason=reason,
        provenance={
            "libraries": library_versions(),
            "machine": machine_info(),
            "git_commit": git_commit(),
            "seed": cell.seed,
            "config": cell.to_dict(),
            **extra.pop("provenance", {}),
        },
        **extra,
    )


def describe_workload(cell: Cell) -> dict:
    if cell.model:
        return {"name": cell.workload, "scenario": "bring-your-own ONNX model", "task_metric": None,
                "params": {"model": cell.model, "inputs": list(cell.inputs), "input_data": cell.input_data,
                           "expected": cell.expected}}
    try:
        return get_workload(cell.workload, **cell.workload_params).describe()
    except Exception:  # unknown workload or bad params: keep the names the user gave
        return {"name": cell.workload, "scenario": "", "params": dict(cell.workload_params)}


def prepare(cell: Cell, batch: int) -> tuple[Prepared, Tolerance, list[str]]:
    """Model, inputs and reference for the cell; notes say what the reference is."""
    if cell.model:
        prepared, reference_from = prepare_model(cell.model, list(cell.inputs), cell.expected,
                                                 cell.input_data, batch, cell.seed)
        return prepared, DEFAULT_TOLERANCES[cell.precision], [f"reference: {reference_from}"]
    workload = get_workload(cell.workload, **cell.workload_params)
    return prepare_workload(workload, batch, cell.seed), workload.tolerance(cell.precision), []


def execute(cell: Cell) -> RunRecord:
    backend = None
    try:
        backend = get_backend(cell.backend)
    except KeyError as exc:
        return base_record(cell, "failed", str(exc).strip("'\""))
    ok, why = backend.available()
    backend_info = {"name": cell.backend, "versions": backend.versions() if ok else {}}
    if not ok:
        return base_record(cell, "skipped", f"{cell.backend} unavailable: {why}", backend=backend_info)

    batch = batch_for(cell.scenario, cell.batch, cell.settings)
    try:
        prepared, tolerance, notes = prepare(cell, batch)
    except (PrepareError, ModelError, KeyError, TypeError, ValueError) as exc:
        return base_record(cell, "failed", f"prepare: {one_line(exc)}", backend=backend_info)
    provenance = {"onnx_sha256": prepared.onnx_sha256, "exporter": prepared.exporter, "opset": prepared.opset}

    spec = CompileSpec(
        precision=cell.precision, batch=batch, threads=cell.threads,
        tuning_db=Path(cell.tuning_db) if cell.tuning_db else None,
        example_inputs=prepared.inputs, reference_outputs=prepared.reference,
    )
    try:
        compiled = backend.compile(prepared.source, spec)
    except Unsupported as exc:
        return base_record(cell, "unsupported", str(exc), backend=backend_info, provenance=provenance)
    except Exception as exc:
        return base_record(cell, "failed", f"compile: {one_line(exc)}", backend=backend_info, provenance=provenance)
    backend_info.update(target=compiled.target, pipeline=compiled.pipeline,
                        tuning_db=compiled.tuning_db, details=compiled.details)
    compile_info = {"seconds": compiled.compile_s, "artifact_bytes": compiled.artifact_bytes}
    try:
        return _measure(cell, prepared, tolerance, notes, compiled, backend_info, compile_info, provenance)
    except Exception as exc:
        return base_record(cell, "failed", f"run: {one_line(exc)}", backend=backend_info,
                           compile=compile_info, provenance=provenance)
    finally:
        if compiled.close:
            compiled.close()


def _measure(cell, prepared: Prepared, tol: Tolerance, notes: list[str], compiled: Compiled,
             backend_info, compile_info, provenance):
    inputs = prepared.inputs
    outputs = compiled.run(inputs)
    fid = fidelity(outputs, prepared.reference)
    failures = check(fid, tol)
    accuracy = {"fidelity": fid.to_dict(), "tolerance": dict(vars(tol)), "failures": failures, "task": None}

    run = compiled.run
    m = measure(lambda: run(inputs), cell.settings)
    stats = LatencyStats.from_samples(m.samples_s, seed=cell.seed)
    batch = next(iter(inputs.values())).shape[0] if inputs else 1
    throughput = {"value": batch * len(m.samples_s) / float(np.sum(m.samples_s)), "unit": "samples/s"}
    return base_record(
        cell, "ok", "; ".join(failures) or None,
        backend=backend_info, compile=compile_info, provenance=provenance,
        latency=stats.to_dict(), throughput=throughput, accuracy=_finite(accuracy),
        verdict="INVALID" if failures else "VALID", notes=notes + ([m.note] if m.note else []),
    )


def _finite(accuracy: dict) -> dict:
    """JSON has no inf/nan: an unbounded tolerance or a diverged output is written as null."""
    def fix(v):
        if isinstance(v, float) and not np.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        return v
    return fix(accuracy)


def main(argv: list[str] | None = None) -> int:
    """Subprocess entry: `python -m chipbench.cell CELL.json OUT.json`."""
    cell_path, out_path = (argv or sys.argv[1:])[:2]
    cell = Cell.from_dict(json.loads(Path(cell_path).read_text()))
    record = execute(cell)
    atomic_write_text(Path(out_path), record.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
