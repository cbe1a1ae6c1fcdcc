"""`chipbench tune`: a resumable tuning session over rounds, and what it reports."""
from __future__ import annotations

import contextlib
import importlib.util
import math
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chipbench.machine import usable_cores
from chipbench.tuning.database import (KEY_FILE, META_FILE, TUNING_SUBDIR, TuningError, canonical_target,
                                       database_folder, database_key, graph_sha256, now, read_curve, read_key,
                                       read_meta, record_count, write_json)
from chipbench.tuning.rounds import RoundRunner


@dataclass
class TuneResult:
    folder: Path
    key: dict  # key.json: {"format", "graph_sha256", "target", "weight_prepack"}
    model: dict  # what was tuned: workload key and batch, or kernel case, and the ONNX sha256
    trials: int  # measured candidates in the database (all sessions)
    tuning_s: float  # tuning wall time (all sessions), excluding latency measurements
    rounds_run: int  # rounds run by this call
    tasks: list[dict]  # {"name", "weight"} per extracted task
    failed_tasks: dict[str, dict]  # task name -> {"reason", "round", "at"}
    coverage: dict  # tasks_found / tasks_with_record / tasks_applied / tasks_without_record
    curve: list[dict]  # per round: trials, tuning_s, latency_ms, ...
    untuned_ms: float | None
    tuned_ms: float | None
    ort_ms: float | None
    break_even: dict | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["folder"] = str(self.folder)
        return d

    def summary(self) -> list[str]:
        """A few lines for the CLI: the database, the curve's end points and the break-even."""
        cov = self.coverage or {}
        lines = [f"database: {self.folder}",
                 f"trials: {self.trials} in {self.tuning_s:.0f} s of tuning ({self.rounds_run} round(s) this run); "
                 f"tasks with a record {cov.get('tasks_with_record', '?')}/{cov.get('tasks_found', '?')}, "
                 f"applied {cov.get('tasks_applied', '?')}"]
        if self.failed_tasks:
            lines.append("failed tasks: " + "; ".join(f"{k} ({v['reason']})" for k, v in self.failed_tasks.items()))
        fmt = lambda v: "n/a" if v is None else f"{v:.4g} ms"  # noqa: E731
        lines.append(f"latency: untuned {fmt(self.untuned_ms)}, tuned {fmt(self.tuned_ms)}, "
                     f"ONNX Runtime {fmt(self.ort_ms)}")
        b = self.break_even or {}
        if b.get("inferences"):
            lines.append(f"break-even: {b['inferences']:,} inferences ({b['hours_at_tuned_latency']:.3g} h "
                         f"of back-to-back inference at the tuned latency) pay back {self.tuning_s:.0f} s of tuning")
        elif b:
            lines.append("break-even: never (the tuned build is not faster than the untuned one)")
        return lines + self.notes


def break_even(untuned_ms: float | None, tuned_ms: float | None, tuning_s: float,
               ort_ms: float | None = None) -> dict | None:
    """How many inferences the tuning time pays back: tuning_s / (untuned - tuned) per query."""
    if untuned_ms is None or tuned_ms is None:
        return None
    saved_s = (untuned_ms - tuned_ms) / 1000.0
    out: dict[str, Any] = {"untuned_ms": untuned_ms, "tuned_ms": tuned_ms, "tuning_s": tuning_s,
                           "speedup": untuned_ms / tuned_ms if tuned_ms > 0 else None,
                           "saved_ms_per_inference": saved_s * 1000.0}
    if saved_s > 0:
        n = tuning_s / saved_s
        out["inferences"] = math.ceil(n)
        out["hours_at_tuned_latency"] = n * tuned_ms / 1000.0 / 3600.0
    else:
        out["inferences"] = None  # never: tuning made it no faster
    if ort_ms is not None:
        out["ort_ms"] = ort_ms
        out["vs_ort"] = tuned_ms / ort_ms if ort_ms > 0 else None
    return out


# --------------------------------------------------------------------------- the tuning loop

def tune(workload_or_kernel: str, trials: int, results_dir: Path, rounds: int = 1, *,
         kind: str | None = None, batch: int = 1, params: dict | None = None, seed: int = 0,
         threads: int | None = None, target: str | None = None, **options: Any) -> TuneResult:
    """`chipbench tune -w WORKLOAD | -k KERNEL --trials N`: tune a workload (exported to ONNX
    at `batch`, with `params`) or a kernel case (e.g. 'gemm/bert-ffn-up') for the host CPU
    until the database holds `trials` measured candidates, in `rounds` rounds, measuring
    latency after each. `kind` is 'workload' or 'kernel' (None: workload names first).
    Other options go to `tune_onnx`."""
    kind = kind or _guess_kind(workload_or_kernel)
    if kind == "workload":
        from chipbench.prepare import export_key, prepare_workload
        from chipbench.workloads.base import get_workload

        try:
            workload = get_workload(workload_or_kernel, **(params or {}))
        except KeyError as exc:
            raise TuningError(str(exc).strip("'\"")) from None
        prepared = prepare_workload(workload, batch, seed)
        model = {"kind": "workload", "name": workload.name, **export_key(workload, batch),
                 "onnx_sha256": prepared.onnx_sha256}
        return tune_onnx(prepared.source.onnx_path, trials, results_dir, rounds, model=model,
                         inputs=prepared.inputs, threads=threads, target=target, seed=seed, **options)
    if kind == "kernel":
        case = _kernel_case(workload_or_kernel)
        source = case.source()
        model = {"kind": "kernel", "name": case.name, "kernel": case.kernel, "params": dict(case.params),
                 "onnx_sha256": _sha256_file(source.onnx_path)}
        return tune_onnx(source.onnx_path, trials, results_dir, rounds, model=model,
                         inputs=case.make_inputs(seed), threads=threads, target=target, seed=seed, **options)
    raise TuningError(f"kind must be 'workload' or 'kernel', not {kind!r}")


COST_MODELS = ("auto", "random", "xgb", "mlp")
STRATEGIES = ("evolutionary-lite", "evolutionary", "replay-trace")


def resolve_cost_model(name: str) -> str:
    """"auto" is XGBoost where it is installed: a random cost model leaves the evolutionary
    search blind, which matters on models with many heavy tasks (ResNet-50)."""
    if name not in COST_MODELS:
        raise TuningError(f"unknown cost model '{name}' (known: {', '.join(COST_MODELS)})")
    if name == "auto":
        return "xgb" if importlib.util.find_spec("xgboost") else "random"
    if name == "xgb" and importlib.util.find_spec("xgboost") is None:
        raise TuningError("cost model 'xgb' needs xgboost: pip install -e '.[tune]'")
    return name


def _guess_kind(name: str) -> str:
    from chipbench.workloads.base import workload_names

    if name in workload_names():
        return "workload"
    if "/" in name:
        return "kernel"
    raise TuningError(f"unknown workload '{name}' (known: {', '.join(sorted(workload_names()))}); "
                      "kernel cases are named KERNEL/LABEL, e.g. gemm/bert-ffn-up")


def _kernel_case(name: str):
    from chipbench.kernels.cases import kernel_cases

    cases = {c.name: c for c in (*kernel_cases(), *kernel_cases("smoke"))}
    if name not in cases:
        raise TuningError(f"unknown kernel case '{name}' (known: {', '.join(sorted(cases))})")
    return cases[name]


def tune_onnx(onnx_path: Path, trials: int, results_dir: Path, rounds: int = 1, *,
              model: dict | None = None, inputs: dict | None = None, name: str | None = None,
              target: str | None = None, threads: int | None = None, seed: int = 0,
              cost_model: str = "auto", strategy: str = "evolutionary-lite",
              task_scheduler: str = "gradient", trials_per_iter: int = 64, builder: str = "pool",
              builders: int | None = None,
              builder_timeout_s: float = 120.0, runner_timeout_s: float = 30.0,
              round_timeout_s: float | None = None, measure_s: float = 1.0,
              focus: float = 0.9, weight_prepack: bool = True, retry_failed: bool = False, nice: int = 0,
              root: Path | None = None,
              crash_tasks: Sequence[str] = (), seed_transfer: bool = True,
              log: Callable[[str], None] | None = None) -> TuneResult:
    """Tune any ONNX file (static shapes) for the host CPU (or `target`) into the database
    keyed by (model, target) under `root` (default RESULTS_DIR/tuning), until it holds
    `trials` measured candidates, in `rounds` rounds. Resumable: records, trials and seconds
    persist; calling again with a larger `trials` goes on from there.

    model: what the model is, kept in meta.json (default {"kind": "onnx", "name": stem});
    its "name" labels the folder. The key itself is (graph_sha256, target, weight_prepack).
    inputs: arrays for latency measurement (default: seeded from the ONNX input shapes).
    cost_model: "auto" (the default: "xgb" when xgboost is installed, as by the `tune` extra,
    else "random"), "random" (no dependency), "xgb" (needs xgboost), "mlp" (torch;
    in TVM 0.27 its first full training fails on small data sets: "need at least one array").
    strategy: "evolutionary-lite" (the default: population 128, 2 generations), "evolutionary"
    (MetaSchedule's default: population 512, 4 generations; with the random cost model its
    generations rank candidates at random, and on vibration-cnn1d the search took 80% of the
    tuning time, ~200 s per 100 trials against ~50 s for the lite search, for no better
    latency) or "replay-trace" (random samples of the design space; the tests use it).
    focus: after every task has a record, a round tunes only the tasks that make up this share
    of the model's estimated time (see `_select_tasks`).
    weight_prepack: tune with weights marked layout-free, so schedules may reorder them once at
    load time (see `backends.tvm.fuse`); part of the key.
    builder: "pool" (chipbench's process pools, the default) or "local" (MetaSchedule's
    LocalBuilder/LocalRunner, which need the `cloudpickle` package); `builders` build processes
    (default: one per core).
    crash_tasks: fault injection for tests, names of tasks whose design-space generation
    aborts the worker process.
    seed_transfer: a new database whose (graph, target) has no database yet starts from the
    closest database of the same graph tuned for another target (chipbench.tuning.transfer):
    its records that build here are re-measured here and committed as this database's first
    records (they count as trials), so the search starts from them; meta.json's `seeded_from`
    says from which. The database is keyed to this target: tuned here, seeded from elsewhere.
    Failed tasks are skipped on later calls unless `retry_failed`."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    onnx_path = Path(onnx_path).resolve()
    if not onnx_path.is_file():
        raise TuningError(f"{onnx_path}: no such ONNX file")
    if trials < 0 or rounds < 1:
        raise TuningError("trials must be >= 0 and rounds >= 1")
    cost_model = resolve_cost_model(cost_model)
    if strategy not in STRATEGIES:
        raise TuningError(f"unknown search strategy '{strategy}' (known: {', '.join(STRATEGIES)})")
    sha = _sha256_file(onnx_path)
    model = {"kind": "onnx", "name": name or onnx_path.stem, **(model or {}), "onnx_sha256": sha}
    target_str = canonical_target(target, threads)
    key = database_key(graph_sha256(onnx_path), target_str, weight_prepack)
    folder = database_folder(Path(root) if root else Path(results_dir) / TUNING_SUBDIR, key, model["name"])
    folder.mkdir(parents=True, exist_ok=True)
    existing = read_key(folder)
    if existing is not None and existing != key:
        raise TuningError(f"{folder}: key.json holds a different key (hash collision?); not touching it")

    with _locked(folder), _sigterm_raises():
        if existing is None:
            write_json(folder / KEY_FILE, key)
        work = folder / "work"
        work.mkdir(exist_ok=True)
        inputs_file = work / "inputs.npz"
        _save_inputs(inputs_file, onnx_path, inputs, seed)
        meta = read_meta(folder) or {"key": key, "tuning_s": 0.0, "wall_s": 0.0, "rounds": [],
                                     "failed_tasks": {}, "created": now()}
        seen = meta.setdefault("onnx_sha256_seen", [])  # the exact files tuned with (weights may differ)
        if sha not in seen:
            seen.append(sha)
        meta["model"] = model
        meta["settings"] = {"cost_model": cost_model, "strategy": strategy, "task_scheduler": task_scheduler,
                            "trials_per_iter": trials_per_iter, "builder": builder, "seed": seed,
                            "tvm_num_threads": _cores(threads)}
        if retry_failed and meta["failed_tasks"]:
            log(f"retrying {len(meta['failed_tasks'])} failed task(s): {', '.join(meta['failed_tasks'])}")
            meta.setdefault("retried_failed", []).append({"at": now(), "tasks": meta["failed_tasks"]})
            meta["failed_tasks"] = {}
        curve = read_curve(folder)
        job_base = {"onnx": str(onnx_path), "folder": str(folder), "target": target_str, "inputs": str(inputs_file),
                    "cost_model": cost_model, "strategy": strategy, "task_scheduler": task_scheduler,
                    "trials_per_iter": trials_per_iter, "builder": builder, "builder_timeout_s": builder_timeout_s,
                    "runner_timeout_s": runner_timeout_s, "measure_s": measure_s, "crash_tasks": list(crash_tasks),
                    "focus": focus, "builders": builders, "weight_prepack": weight_prepack,
                    "threads": _cores(threads)}
        if seed_transfer and trials > 0 and record_count(folder) == 0:
            seeding = _transfer_seed(key, folder, Path(root) if root else Path(results_dir) / TUNING_SUBDIR, log)
            if seeding is not None:
                job_base["seed_db"], meta["seeded_from"] = seeding
        runner = RoundRunner(folder, job_base, meta, curve, nice, round_timeout_s, log)
        notes: list[str] = []
        done = record_count(folder)
        remaining = max(0, trials - done)
        if done and remaining:
            log(f"resuming {folder.name}: {done} trials in the database, tuning {remaining} more")
        per_round = math.ceil(remaining / rounds) if remaining else 0
        rounds_run = 0
        while record_count(folder) < trials or "untuned_ms" not in runner.meta:
            left = max(0, trials - record_count(folder))
            added = runner.round(min(per_round, left), seed=seed + len(runner.meta["rounds"]))
            rounds_run += 1
            if "untuned_ms" not in runner.meta:
                raise TuningError(f"{folder}: the first worker measured no untuned latency (log: {folder}/work)")
            if added == 0 and left > 0:
                notes.append("a round added no trials (search space exhausted, or every task failed); stopped")
                break
        meta = runner.meta
        curve = runner.curve
        meta["trials"] = record_count(folder)
        meta["tvm"] = _tvm_version()
        meta["updated"] = now()
        latest = curve[-1] if curve else {}
        untuned = meta.get("untuned_ms")
        tuned = latest.get("latency_ms") if latest.get("trials", 0) > 0 else None
        meta["break_even"] = break_even(untuned, tuned, meta["tuning_s"], meta.get("ort_ms"))
        write_json(folder / META_FILE, meta)
    seeded = meta.get("seeded_from")
    if seeded:
        notes.append(f"tuned here, seeded from {seeded['source_slug']} ({seeded.get('records_seeded', 0)} of its "
                     f"record(s) re-measured here, {seeded.get('records_dropped', 0)} dropped: not built for this target)")
    if tuned is not None and untuned is not None and tuned >= untuned:
        notes.append(f"tuned ({tuned:.4g} ms) is not faster than untuned ({untuned:.4g} ms)")
    return TuneResult(folder=folder, key=key, model=model, trials=meta["trials"], tuning_s=meta["tuning_s"],
                      rounds_run=rounds_run, tasks=meta.get("tasks", []), failed_tasks=meta["failed_tasks"],
                      coverage=runner.last_coverage or latest.get("coverage", {}), curve=curve,
                      untuned_ms=untuned, tuned_ms=tuned, ort_ms=meta.get("ort_ms"),
                      break_even=meta["break_even"], notes=notes + runner.notes)


def _transfer_seed(key: dict, folder: Path, root: Path, log: Callable[[str], None]) -> tuple[str, dict] | None:
    """(folder of the transferred records, meta.json's `seeded_from`) for a new database, from
    the closest database of the same graph for another target, or None when there is none."""
    from chipbench.tuning.database import search_roots
    from chipbench.tuning.transfer import find_source, materialize

    source = find_source(key["graph_sha256"], key["target"], search_roots([root]))
    if source is None or source.folder.resolve() == folder.resolve():
        return None
    seed_dir, info = materialize(source, key["target"])
    if not info["records_kept"]:
        return None
    log(f"seeding from {source.slug} ({info['records_kept']} record(s) that build here, re-measured here; "
        f"{info['records_dropped']} dropped)")
    return str(seed_dir), {"source_slug": source.slug, "source_target": info["source_target"],
                           "source_key": source.key, "records_kept": info["records_kept"],
                           "records_dropped": info["records_dropped"], "at": now()}


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM becomes an exception, so an interrupted tuning kills its worker and saves."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _locked(folder: Path):
    import fcntl

    with open(folder / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TuningError(f"{folder}: another tuning run holds this database") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _save_inputs(path: Path, onnx_path: Path, inputs: dict | None, seed: int) -> None:
    import numpy as np

    import onnx

    if inputs is None:
        inputs = onnx_inputs(onnx_path, seed)
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    init = {i.name for i in graph.initializer}
    order = [vi.name for vi in graph.input if vi.name not in init]
    missing = [n for n in order if n not in inputs]
    if missing:
        raise TuningError(f"{onnx_path}: no input arrays for {', '.join(missing)}")
    np.savez(path, **{n: np.asarray(inputs[n]) for n in order})  # in graph order: the VM's argument order


def onnx_inputs(onnx_path: Path, seed: int = 0) -> dict:
    """Seeded arrays for an ONNX model's graph inputs (static shapes needed): normal floats,
    zeros for integers (token ids, indices stay in range)."""
    import numpy as np
    import onnx
    from onnx import helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    rng = np.random.default_rng(seed)
    out = {}
    for vi in model.graph.input:
        if vi.name in init:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tt.shape.dim]
        if any(d <= 0 for d in dims):
            raise TuningError(f"{onnx_path}: input '{vi.name}' has a dynamic shape; tuning needs static shapes")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        if dtype.kind == "f":
            out[vi.name] = rng.standard_normal(dims).astype(dtype)
        else:
            out[vi.name] = np.zeros(dims, dtype)
    return out


def _sha256_file(path: Path) -> str:
    from chipbench.prepare import sha256_file

    return sha256_file(Path(path))


def _cores(threads: int | None) -> int:
    return threads or usable_cores()


def _tvm_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("apache-tvm")
    except Exception:
        return None
