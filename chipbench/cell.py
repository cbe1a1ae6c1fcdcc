"""Run one cell in this process: prepare, compile, check accuracy, measure, make a RunRecord.

Every failure that Python can catch becomes a record with a one-line reason; the runner
(chipbench.runner) covers the rest (crash, hang, out-of-memory) by running this in a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from chipbench.accuracy import Tolerance, check, fidelity
from chipbench.backends.base import Arrays, Compiled, CompileSpec, Unsupported, get_backend
from chipbench.byo import ModelError, prepare_model
from chipbench.device import Device, DeviceError, default_device, supported_kinds
from chipbench.errors import one_line
from chipbench.int8_gate import accuracy_gate_for
from chipbench.machine import git_commit, library_versions, machine_info
from chipbench.paths import atomic_write_text
from chipbench.prepare import Prepared, prepare_workload, sha256_file
from chipbench.record import RunRecord
from chipbench.quiet import machine_load_dict, quiet_rule, try_sample
from chipbench.measures import Accuracy
from chipbench.recording import measured_fields
from chipbench.resources import PinError, ResourceLog, apply_pin, cpu_use
from chipbench.scenario_run import run_cell_scenario
from chipbench.scenarios import batch_for
from chipbench.speed import speed_dict, speed_rule, try_speed
from chipbench.suite import Cell
from chipbench.taskeval import calibration_for, task_accuracy
from chipbench.validity import measurement_rule
from chipbench.workloads.base import DEFAULT_TOLERANCES, Workload, get_workload


def base_record(cell: Cell, status: str, reason: str | None = None, **extra) -> RunRecord:
    """A record that carries the cell's identity and provenance, whatever became of it."""
    workload = describe_workload(cell)
    extra.setdefault("kind", "profile" if cell.profile_runs else "run")
    return RunRecord(
        workload=workload,
        backend=extra.pop("backend", {"name": cell.backend, "versions": {}}),
        precision=extra.pop("precision", cell.precision),
        batch=extra.pop("batch", None) or batch_for(cell.scenario, cell.batch, cell.settings),
        scenario=extra.pop("scenario", None) or {"name": cell.scenario, "settings": cell.settings.to_dict()},
        status=status,
        reason=reason,
        provenance={
            "libraries": library_versions(),
            "machine": machine_info(),
            "device": cell_device(cell),  # what the cell was for, even when it never got to run
            "git_commit": git_commit(),
            "seed": cell.seed,
            "config": cell.to_dict(),
            **extra.pop("provenance", {}),
        },
        **extra,
    )


def cell_device(cell: Cell) -> dict:
    """{"kind", "id"} of the device a cell names, or its backend's default device; "cpu" when
    neither can be told (an unknown backend, a device string that does not parse)."""
    try:
        device = Device.parse(cell.device) if cell.device else default_device(get_backend(cell.backend))
    except (DeviceError, KeyError):
        device = Device()
    return {"kind": device.kind, "id": str(device)}


def describe_device(device: Device, compiled: Compiled) -> dict:
    """The device a cell ran on, as the backend reports it (the host CPU when it reports nothing)."""
    if compiled.device:
        return {"kind": device.kind, "id": str(device), **compiled.device}
    m = machine_info()
    return {"kind": device.kind, "id": str(device), "name": m["cpu_model"], "cores": m["cores"]}


def describe_workload(cell: Cell) -> dict:
    if cell.kernel:
        case = kernel_case(cell.kernel)
        return {"name": cell.workload, "kind": "kernel", "scenario": f"operator microbenchmark: {case.kernel}",
                "task_metric": None, "params": {"kernel": case.name, **case.params}}
    if cell.model:
        return {"name": cell.workload, "kind": "model", "scenario": "bring-your-own ONNX model", "task_metric": None,
                "params": {"model": cell.model, "sha256": cell.workload_params.get("sha256"),
                           "inputs": list(cell.inputs), "input_data": cell.input_data, "expected": cell.expected}}
    try:
        return get_workload(cell.workload, **cell.workload_params).describe()
    except Exception:  # unknown workload or bad params: keep the names the user gave
        return {"name": cell.workload, "scenario": "", "params": dict(cell.workload_params)}


@dataclass
class Preparation:
    prepared: Prepared
    tolerance: Tolerance
    notes: list[str]
    batch: int  # samples per query, as it will run
    precision: str  # what runs: the cell's precision, or a foreign graph's own
    workload: Workload | None = None  # None for a foreign ONNX model or a kernel
    calibration: tuple | None = None  # (batches callable, key) for int8
    work: dict | None = None  # FLOPs and bytes of one query (kernel: exact minimum; graph: per-node sum)


def kernel_case(name: str):
    from chipbench.kernels.cases import kernel_cases

    for case in kernel_cases() + kernel_cases("smoke"):
        if case.name == name:
            return case
    raise KeyError(f"unknown kernel case '{name}' (see `chipbench kernels --list`)")


def prepare(cell: Cell, batch: int) -> Preparation:
    """Model, inputs, reference and calibration data for the cell."""
    if cell.kernel:
        case = kernel_case(cell.kernel)
        inputs = case.make_inputs(cell.seed)
        reference = case.reference(inputs)
        source = case.source()
        prepared = Prepared(source, inputs, reference, sha256_file(source.onnx_path), "chipbench.kernels", 17)
        # the case's own gate: max error relative to the reference's largest magnitude
        scale = float(np.max(np.abs(reference["Y"])))
        tolerance = Tolerance(max_abs=case.tolerance * scale, rel_l2=case.tolerance * 10, min_cosine=0.9999)
        calibration = (lambda: [case.make_inputs(10_000 + i) for i in range(8)],
                       {"kernel": case.name, "split": "synthetic", "n": 8})
        return Preparation(prepared, tolerance, ["reference: numpy"], 1, cell.precision, calibration=calibration,
                           work={"flops": case.flops, "bytes": case.bytes, "source": "kernel case (exact)"})
    if cell.model:
        prepared, plan, reference_from = prepare_model(
            cell.model, list(cell.inputs), cell.expected, cell.input_data, cell.batch, batch, cell.seed,
            cell.workload_params.get("sha256"))
        # a foreign graph runs as it computes unless the cell asks for a conversion (fp32 = as given)
        native = prepared.source.precision
        precision = native if cell.precision == "fp32" else cell.precision
        if native != "fp32" and precision != native:
            raise ModelError(f"{cell.model}: the graph computes in {native}; --precision {precision} converts fp32 models")
        synthetic = (lambda: [make_model_inputs(prepared, 10_000 + i) for i in range(8)],
                     {"model": prepared.onnx_sha256, "split": "synthetic", "n": 8 * plan.batch})
        notes = [f"reference: {reference_from}", *plan.notes]
        if native != "fp32":
            notes.append(f"the graph computes in {native} as given")
        return Preparation(prepared, DEFAULT_TOLERANCES[precision], notes, plan.batch, precision,
                           calibration=synthetic, work=graph_work(prepared.source.onnx_path))
    workload = get_workload(cell.workload, **cell.workload_params)
    prepared = prepare_workload(workload, batch, cell.seed)
    return Preparation(prepared, workload.tolerance(cell.precision), [], batch, cell.precision, workload,
                       calibration_for(workload, batch), graph_work(prepared.source.onnx_path))


def compile_spec(cell: Cell, prep: Preparation, device: Device) -> CompileSpec:
    """What the backend is asked to build for this cell: the precision and batch that will run."""
    return CompileSpec(
        precision=prep.precision, batch=prep.batch, threads=cell.threads, device=device, target=cell.target,
        tuning_db=Path(cell.tuning_db) if cell.tuning_db else None,
        options={"no_transfer": True} if cell.no_transfer else {},
        example_inputs=prep.prepared.inputs, reference_outputs=prep.prepared.reference,
        calibration=prep.calibration[0] if prep.calibration else None,
        calibration_key=prep.calibration[1] if prep.calibration else None,
        accuracy_gate=accuracy_gate_for(prep, cell.task_samples),
    )


def graph_work(onnx_path: Path) -> dict | None:
    """FLOPs and minimum bytes of one query, summed over the ONNX graph's nodes."""
    from chipbench.kernels.onnx_flops import node_costs, totals

    try:
        return {**totals(node_costs(onnx_path)), "source": "onnx_flops (per-node sum)"}
    except Exception:  # an exotic graph: the run is still worth recording without it
        return None


def make_model_inputs(prepared: Prepared, seed: int) -> Arrays:
    from chipbench.byo import make_inputs

    return make_inputs({k: (v.shape, v.dtype.name) for k, v in prepared.inputs.items()}, seed)


def onnx_ops(path: Path) -> dict[str, int]:
    """How many nodes of each operator type the model's main graph has."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(sorted(Counter(node.op_type for node in graph.node).items()))


def coverage(ops: dict[str, int], status: str, failed_ops: tuple[str, ...] = ()) -> dict:
    """Per ONNX operator: "ran", or where a backend stopped, "unsupported" for the operators at
    fault and "not reached" for the others (or "failed" when no operator was named)."""
    if failed_ops:
        per_op = {op: "unsupported" if op in failed_ops else "not reached" for op in ops}
    else:
        per_op = {op: status for op in ops}
    return {"ops": ops, "status": per_op}


def execute(cell: Cell, calibrated_s: float | None = None) -> RunRecord:
    """Prepare, compile, measure and judge one cell. `calibrated_s`: the machine-speed rule's
    calibration from this machine's device profile (chipbench.speed), None where there is none."""
    backend = None
    try:
        backend = get_backend(cell.backend)
    except KeyError as exc:
        return base_record(cell, "failed", str(exc).strip("'\""))
    ok, why = backend.available()
    backend_info = {"name": cell.backend, "versions": backend.versions() if ok else {}}
    if not ok:
        return base_record(cell, "skipped", f"{cell.backend} unavailable: {why}", backend=backend_info)
    try:  # before any thread pool starts, so every thread the backend makes inherits it
        apply_pin(cell.pin)
    except (PinError, OSError) as exc:
        return base_record(cell, "failed", f"--pin: {exc}", backend=backend_info)
    try:
        device = Device.parse(cell.device) if cell.device else default_device(backend)
    except DeviceError as exc:
        return base_record(cell, "failed", str(exc), backend=backend_info)
    if device.kind not in supported_kinds(backend):
        return base_record(cell, "unsupported", f"{cell.backend} runs on {', '.join(supported_kinds(backend))}, "
                           f"not {device}", backend=backend_info)

    if cell.scenario == "generation":  # prefill + decode graphs, TTFT/TPOT (chipbench.generation_cell)
        from chipbench.generation_cell import execute_generation

        return execute_generation(cell, backend, device, backend_info, base_record)
    batch = batch_for(cell.scenario, cell.batch, cell.settings)
    try:
        prep = prepare(cell, batch)
    except Exception as exc:  # the workload, the model or its reference: one line, never a crash
        return base_record(cell, "failed", f"prepare: {one_line(exc)}", backend=backend_info)
    prepared = prep.prepared
    provenance = {"onnx_sha256": prepared.onnx_sha256, "exporter": prepared.exporter, "opset": prepared.opset}
    ran = {"precision": prep.precision, "batch": prep.batch, "backend": backend_info, "provenance": provenance}
    # Backends that run the torch model have no ONNX operators to cover.
    ops = onnx_ops(prepared.source.onnx_path) if getattr(backend, "runs_onnx", True) else None

    spec = compile_spec(cell, prep, device)
    log = ResourceLog(pin=cell.pin, threads_requested=cell.threads)
    try:
        start = time.perf_counter()
        if cell.model:  # a foreign model of an opset the backend refuses: converted once, saying so
            from chipbench.opset_lift import compile_lifting

            compiled, _lifted, converted = compile_lifting(backend, prepared.source, spec, prepared.opset)
            prep.notes.extend([converted] if converted else [])
        else:
            compiled = backend.compile(prepared.source, spec)
        log.load_s = time.perf_counter() - start
    except Unsupported as exc:
        return base_record(cell, "unsupported", str(exc), **ran,
                           coverage=coverage(ops, "unsupported", exc.ops) if ops and exc.ops else None)
    except Exception as exc:
        return base_record(cell, "failed", f"compile: {one_line(exc)}", **ran,
                           coverage=coverage(ops, "failed") if ops else None)
    if compiled.details.get("tuning"):  # tuned here or transferred, from which database
        ran["tuning"] = compiled.details.pop("tuning")
    if compiled.quantization:  # which int8 configuration runs, and why (chipbench.int8_search)
        ran["quantization"] = compiled.quantization
    backend_info.update(target=compiled.target, pipeline=compiled.pipeline,
                        tuning_db=compiled.tuning_db, details=compiled.details)
    compile_info = {"seconds": compiled.compile_s, "artifact_bytes": compiled.artifact_bytes}
    provenance["device"] = describe_device(device, compiled)
    log.backend_threads = compiled.details.get("threads")
    try:
        if cell.profile_runs:
            return _profile(cell, prep, compiled, ran, compile_info)
        return _measure(cell, prep, compiled, ran, compile_info, coverage(ops, "ran") if ops else None, log,
                        calibrated_s)
    except Exception as exc:
        return base_record(cell, "failed", f"run: {one_line(exc)}", **ran, compile=compile_info,
                           coverage=coverage(ops, "failed") if ops else None)
    finally:
        if compiled.close:
            compiled.close()


def _profile(cell, prep: Preparation, compiled: Compiled, ran: dict, compile_info) -> RunRecord:
    """A per-operator profile of the compiled model, checked for fidelity first (a profile of a
    build that computes something else would be a profile of nothing)."""
    if compiled.profile is None:
        return base_record(cell, "unsupported", f"{cell.backend} offers no per-operator profile",
                           **ran, compile=compile_info)
    fid = fidelity(compiled.run(prep.prepared.inputs), prep.prepared.reference)
    failures = check(fid, prep.tolerance)
    prof = compiled.profile(prep.prepared.inputs, cell.profile_runs)
    prof.workload, prof.batch = cell.workload, prep.batch
    return base_record(cell, "ok", "; ".join(failures) or None, **ran, compile=compile_info,
                       accuracy=Accuracy(fid, dict(vars(prep.tolerance)), tuple(failures)), verdict="INVALID" if failures else "VALID",
                       profile=prof.to_dict(), notes=prep.notes, work=prep.work)


def _measure(cell, prep: Preparation, compiled: Compiled, ran: dict, compile_info, ops_coverage,
             log: ResourceLog | None = None, calibrated_s: float | None = None):
    """Time the compiled model as the cell's scenario says and make its record: the first run
    (cold, timed apart), the task metric, the machine's load and the CPU's speed just before
    and after the timed run (outside it), CPU use over it, and the verdict from the named rules."""
    log = log or ResourceLog(pin=cell.pin, threads_requested=cell.threads)
    inputs = prep.prepared.inputs
    start = time.perf_counter()
    outputs = compiled.run(inputs)
    log.first_inference_s = time.perf_counter() - start
    task = None
    if prep.workload is not None and prep.workload.task_metric and cell.task_samples > 0:
        task = task_accuracy(compiled.run, prep.workload, prep.batch, cell.task_samples)
    judge_quiet = cell.settings.quiet_cores is not None
    # the load window first: the cell's own thread pools stop spinning before the speed check
    before = try_sample() if judge_quiet else None
    speed_before = try_speed(calibrated_s) if judge_quiet else None
    with cpu_use() as cpu:
        timed = run_cell_scenario(cell, prep, compiled, ran["provenance"].get("device"))
    after = try_sample() if judge_quiet else None
    speed_after = try_speed(calibrated_s) if judge_quiet else None
    log.cpu = cpu
    if judge_quiet:
        log.machine_load = {**machine_load_dict(before, after, cell.settings.quiet_cores),
                            "speed": speed_dict(speed_before, speed_after, calibrated_s)}
    quiet = quiet_rule(before, after, cell.settings.quiet_cores)
    speed = speed_rule(speed_before, speed_after, judge_quiet)
    meter = timed.meter
    scenario = {"name": cell.scenario, "settings": cell.settings.to_dict(), "loadgen": timed.loadgen}
    measured = measured_fields(timed.samples_s, prep.batch, outputs, prep.prepared.reference, prep.tolerance,
                               vars(prep.tolerance), seed=cell.seed, task=task,
                               rules=[measurement_rule(timed.stop_note), quiet, speed], scenario=scenario)
    measured["latency"] = replace(measured["latency"], **timed.latency_extra)
    if timed.throughput:
        measured["throughput"] = timed.throughput
    return base_record(cell, "ok", measured.pop("reason"), **ran, compile=compile_info, **measured,
                       scenario=scenario, notes=prep.notes + timed.notes + [n for n in (meter.note,) if n],
                       coverage=ops_coverage, work=prep.work, energy=meter.result(prep.batch),
                       resources=log.to_dict(ran["provenance"].get("device")))


def die_with_parent(pdeathsig: bool = True) -> None:
    """Take this cell (and everything it started) down when the sweep that started it dies.

    The runner puts each cell in a process group of its own and names itself in
    CHIPBENCH_PARENT_PID. A watchdog process in that group (a shell loop, so it needs no Python
    and no GIL) waits for the parent to go and then kills the whole group: it works however the
    parent died (SIGKILL included) and whatever the cell is doing, a long native call in TVM,
    nvcc or ONNX Runtime included, and takes the cell's own children with it. On Linux the
    kernel also kills the cell itself at once (prctl PR_SET_PDEATHSIG, SIGKILL; `pdeathsig`
    False leaves it out: the kernel ties it to the parent's *thread*, and a fork server may be
    started from a runner's worker thread). When the cell ends normally, the runner kills its
    group, watchdog included."""
    parent = int(os.environ.get("CHIPBENCH_PARENT_PID", "0") or 0)
    if not parent:
        return
    if pdeathsig and sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1  # <linux/prctl.h>
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    group = os.getpgrp()
    import subprocess

    subprocess.Popen(["sh", "-c", f"while kill -0 {parent} 2>/dev/null; do sleep 0.5; done; kill -KILL -{group}"],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if os.getppid() != parent:  # the parent died before the watchdog was there
        os.killpg(group, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    """Subprocess entry: `python -P -m chipbench.cell CELL.json OUT.json`, where CELL.json holds
    {"cell": Cell.to_dict(), "context": {"device_profile": ...}}."""
    die_with_parent()
    cell_path, out_path = (argv or sys.argv[1:])[:2]
    job = json.loads(Path(cell_path).read_text())
    cell = Cell.from_dict(job["cell"])
    profile = job.get("context", {}).get("device_profile")
    record = execute(cell, (profile or {}).get("reference_loop_s"))
    if record.device_id == "cpu":  # this host's measured ceilings describe this host's CPU only
        record.provenance.setdefault("device_profile", profile)
    atomic_write_text(Path(out_path), record.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
