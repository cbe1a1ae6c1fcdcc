"""MetaSchedule tuning for the host CPU: exactly keyed, persistent, resumable databases.

A tuning database is a folder

    <root>/<target-slug>/<model-label>-<key-hash>/
        key.json                        the full key, compared exactly: {"format", "graph_sha256",
                                        "target", "weight_prepack"} (see below)
        database_workload.json          MetaSchedule JSONDatabase (what `backends.tvm.build`
        database_tuning_record.json     applies with MetaScheduleApplyDatabase)
        meta.json                       the model (workload key, params, batch, ONNX sha256s,
                                        or kernel case), trials, tuning seconds, rounds, tasks,
                                        failed tasks, break-even
        curve.json                      [(trials, tuning seconds, latency ms), ...] per round
        work/                           worker logs, MetaSchedule logs, inputs (never shipped)

`<root>` is `RESULTS_DIR/tuning` for `chipbench tune`, and `results/tuned` in the repository
for shipped, pre-tuned databases (like TVM's old TopHub: records per target). The folder
name only spreads folders out; a lookup always reads key.json and compares it exactly.

The key. Schedules depend on the computation graph and its shapes, never on weight values, so
the model is identified by `graph_sha256`: the sha256 of the ONNX model with the values of its
large floating-point initializers (the weights) left out, and everything else kept (nodes,
attributes, shapes, dtypes, small or integer initializers such as Reshape targets). A
workload's params and batch are in the graph's shapes; retraining its weights (or a new seed)
keeps its database. The target is the canonical TVM target JSON string (CPU model and core
count included). `weight_prepack` says the tasks were extracted with weights marked
layout-free, so the build must prepack weights the same way (format 2 keys predate it and
mean no prepacking; they are still found and applied). The exact ONNX sha256s a database was
tuned with are kept in meta.json.
Records could not misapply anyway: MetaSchedule matches each task by structural equality of
its TIR, and the tuned backend reports how many tasks found and applied a record.

Lookup (`find_database`), as the `tvm-llvm-tuned` backend does it: compute the key from the
ONNX file and the target, and take the folder whose key.json equals it (a prepacked database
before a format 2 one).

Tuning runs in rounds, each in a worker subprocess (`python -m chipbench.tuning worker ...`):
the worker extracts tasks from the fused module (the same passes `build()` uses, so database
keys match), tunes R trials with MetaSchedule (builder and runner in their own process pools,
so a candidate that crashes or hangs costs one measurement), then compiles with the database
and measures latency. A worker that dies (a crash inside MetaSchedule itself) is blamed on the
task it was working on (from the task scheduler's log); that task is recorded as failed and
the round goes on without it. When no task can be blamed, each task is retried in its own
worker to find the culprit.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

KEY_FORMAT = 3
LEGACY_KEY_FORMAT = 2  # before weight prepacking: no "weight_prepack" field, built without it
KEY_FILE = "key.json"
META_FILE = "meta.json"
CURVE_FILE = "curve.json"
RECORD_FILES = ("database_workload.json", "database_tuning_record.json")
SHIPPED_FILES = (KEY_FILE, *(f"{n}.gz" for n in RECORD_FILES), META_FILE, CURVE_FILE)  # as in results/tuned
TUNING_SUBDIR = "tuning"  # RESULTS_DIR/tuning
ENV_DIRS = "CHIPBENCH_TUNING_DIRS"  # extra roots, os.pathsep-separated


class TuningError(Exception):
    """Tuning could not start or finish (bad input, locked database, no tasks)."""


def shipped_root() -> Path:
    """`results/tuned/` in the source tree: pre-tuned databases that ship with chipbench."""
    return Path(__file__).resolve().parent.parent / "results" / "tuned"


# --------------------------------------------------------------------------- keys and lookup

def canonical_target(target: str | dict | None = None, threads: int | None = None) -> str:
    """The canonical TVM target string (JSON) that keys a database: the host CPU by default."""
    import tvm

    if target is None:
        from chipbench.backends.tvm import host_target

        return str(host_target(threads))
    if isinstance(target, str):
        return str(tvm.target.Target(target))
    return str(tvm.target.Target(dict(target)))


def target_slug(target: str) -> str:
    """A readable folder name for a target, e.g. 'llvm-znver4-2c' (+ a hash when it has
    attributes beyond kind, mcpu and num-cores, so distinct targets never share a folder)."""
    try:
        spec = json.loads(target)
    except ValueError:
        spec = {"kind": target}
    parts = [str(spec.get("kind", "target")), str(spec.get("mcpu") or "generic")]
    if spec.get("num-cores"):
        parts.append(f"{spec['num-cores']}c")
    plain = {"kind", "mcpu", "num-cores", "tag", "keys"}
    extra = {k: v for k, v in spec.items() if k not in plain}
    if extra or spec.get("keys", ["cpu"]) != ["cpu"] or spec.get("tag"):
        parts.append(hashlib.sha256(target.encode()).hexdigest()[:8])
    return _safe("-".join(parts))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", text).strip("-")[:80] or "model"


def _key_text(key: dict) -> str:
    return json.dumps(key, sort_keys=True, default=str)


_FLOAT_TYPES = (1, 10, 11, 16)  # onnx TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16
_KEEP_VALUES_UP_TO = 16  # elements: scalars and tiny tensors (clip bounds, scales) stay in the hash


def graph_sha256(onnx_path: Path) -> str:
    """sha256 of the ONNX model without its weights' values (see the module docstring)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)

    def strip(graph) -> None:
        for t in graph.initializer:
            if t.data_type in _FLOAT_TYPES and math.prod(t.dims) > _KEEP_VALUES_UP_TO:
                for f in ("raw_data", "float_data", "double_data", "int32_data", "external_data"):
                    t.ClearField(f)
                t.ClearField("data_location")
        graph.ClearField("doc_string")
        for node in graph.node:
            node.ClearField("doc_string")
            for attr in node.attribute:
                if attr.HasField("g"):
                    strip(attr.g)
                for g in attr.graphs:
                    strip(g)

    strip(model.graph)
    for f in ("doc_string", "producer_name", "producer_version", "model_version"):
        model.ClearField(f)
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def database_key(graph_sha: str, target: str, weight_prepack: bool = True) -> dict:
    """The full key of a database: what key.json holds and what a lookup compares, exactly."""
    return {"format": KEY_FORMAT, "graph_sha256": graph_sha, "target": target, "weight_prepack": weight_prepack}


def weight_prepack(key: dict | None) -> bool:
    """Whether a database's tasks (and so its build) have weights prepacked."""
    return bool((key or {}).get("weight_prepack", False))


def database_folder(root: Path, key: dict, name: str) -> Path:
    digest = hashlib.sha256(_key_text(key).encode()).hexdigest()[:12]
    return Path(root) / target_slug(key["target"]) / f"{_safe(name)}-{digest}"


def read_key(folder: Path) -> dict | None:
    try:
        return json.loads((Path(folder) / KEY_FILE).read_text())
    except (OSError, ValueError):
        return None


def key_matches(key: dict | None, graph_sha: str, target: str) -> bool:
    """Exact comparison of the whole key (format, graph hash, canonical target string, prepacking)."""
    legacy = {"format": LEGACY_KEY_FORMAT, "graph_sha256": graph_sha, "target": target}
    return key in (database_key(graph_sha, target, True), database_key(graph_sha, target, False), legacy)


def search_roots(extra: Iterable[Path | str] = ()) -> list[Path]:
    """Where `tvm-llvm-tuned` looks, in order: roots it is given (--tuning-db, options),
    $CHIPBENCH_TUNING_DIRS, ./results/tuning (the default results dir), the shipped results/tuned."""
    roots = [Path(p) for p in extra if p]
    roots += [Path(p) for p in os.environ.get(ENV_DIRS, "").split(os.pathsep) if p]
    roots += [Path("results") / TUNING_SUBDIR, shipped_root()]
    seen, out = set(), []
    for r in roots:
        resolved = r.resolve()
        if resolved not in seen:
            seen.add(resolved)
            out.append(r)
    return out


def candidate_folders(roots: Sequence[Path], target: str) -> list[Path]:
    """Database folders under the roots' slug folder for this target (a root may itself be a
    slug folder or a database folder)."""
    slug = target_slug(target)
    out: list[Path] = []
    for root in roots:
        root = Path(root)
        if (root / KEY_FILE).is_file():
            out.append(root)
            continue
        for base in (root / slug, root):
            if base.is_dir():
                out += sorted(p for p in base.iterdir() if (p / KEY_FILE).is_file())
    return out


def find_database(graph_sha: str, target: str, roots: Sequence[Path] | None = None) -> Path | None:
    """The database folder whose key.json is exactly this model's and target's key; the first
    root that has one wins, and within a root a prepacked one, then the one with the most records."""
    for root in roots if roots is not None else search_roots():
        matches = [f for f in candidate_folders([root], target) if key_matches(read_key(f), graph_sha, target)]
        if matches:
            return max(matches, key=lambda f: (weight_prepack(read_key(f)), record_count(f)))
    return None


def unpacked(folder: Path) -> Path:
    """A database MetaSchedule can open. Shipped databases keep their records gzipped (the
    serialized task modules are megabytes of JSON); they are unpacked once into the cache,
    reused only while the cached key.json and records equal the shipped ones exactly."""
    folder = Path(folder)
    if not (folder / f"{RECORD_FILES[0]}.gz").is_file():
        return folder
    from chipbench.paths import atomic_write_bytes, cache_dir

    dest = cache_dir("tuned", folder.parent.name, folder.name)
    files = {name: gzip.decompress((folder / f"{name}.gz").read_bytes()) for name in RECORD_FILES}
    files.update({name: (folder / name).read_bytes() for name in (KEY_FILE, META_FILE, CURVE_FILE)
                  if (folder / name).is_file()})
    for name, data in files.items():
        path = dest / name
        if not path.is_file() or path.read_bytes() != data:
            atomic_write_bytes(path, data)
    return dest


def record_count(folder: Path) -> int:
    """Measured candidates in the database (one line per tuning record)."""
    path = Path(folder) / RECORD_FILES[1]
    packed = path.with_name(path.name + ".gz")
    if packed.is_file():
        data = gzip.decompress(packed.read_bytes())
    elif path.is_file():
        data = path.read_bytes()
    else:
        return 0
    return sum(1 for line in data.splitlines() if line.strip())


def records_digest(folder: Path) -> str:
    """sha256 over key.json and the two record files: what a tuned build depends on."""
    digest = hashlib.sha256()
    for name in (KEY_FILE, *RECORD_FILES):
        path = Path(folder) / name
        digest.update(name.encode())
        digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()


def read_meta(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / META_FILE).read_text())
    except (OSError, ValueError):
        return {}


def read_curve(folder: Path) -> list[dict]:
    try:
        return json.loads((Path(folder) / CURVE_FILE).read_text())
    except (OSError, ValueError):
        return []


# --------------------------------------------------------------------------- TVM helpers

def load_cpu_intrinsics() -> None:
    """Register the x86 tensor intrinsics (VNNI, AVX-512 dot products) without the rest.

    `import tvm.s_tir.tensor_intrin` imports every target's intrinsics (CUDA, ROCm, Metal,
    Hexagon, ...) by parsing TVMScript, which takes 60-140 s per process here; MetaSchedule
    does it in every TuneContext and in every default builder job. For the CPU only x86 is
    needed (~1 s). We put an empty package object in its place and import x86.py into it.
    A process that later needs GPU intrinsics must not call this (tuning workers and the
    tuned CPU backend's cell subprocess do not)."""
    import importlib
    import importlib.util
    import types

    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        import tvm.s_tir  # noqa: F401  (the parent package must exist)

        spec = importlib.util.find_spec(name)
        pkg = types.ModuleType(name)
        pkg.__path__ = list(spec.submodule_search_locations or [])
        pkg.__package__ = name
        pkg.__file__ = spec.origin
        pkg.__doc__ = "chipbench: x86 intrinsics only (see chipbench.tuning.load_cpu_intrinsics)"
        sys.modules[name] = pkg
    importlib.import_module(name + ".x86")


def build_without_gpu_intrinsics(mod: Any, target: Any, _params: Any) -> Any:
    """MetaSchedule builder function: `default_build` minus its import of every target's
    tensor intrinsics (which alone outlasts the builder's timeout). Runs in builder workers."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def fuse_for_tuning(mod: Any, target: Any, weight_prepack: bool = False) -> Any:
    """The module `backends.tvm.build` applies a database to: tasks are extracted from this,
    so their keys match the build."""
    from chipbench.backends.tvm import fuse

    return fuse(mod, target, weight_prepack)


def extract(fused: Any, target: Any) -> list[Any]:
    from tvm.s_tir import meta_schedule as ms

    return list(ms.relax_integration.extract_tasks(fused, target))


def coverage(fused: Any, target: Any, database_dir: Path, tasks: list[Any] | None = None) -> dict:
    """Per extracted task: does the database hold a measured record for it, and does
    MetaScheduleApplyDatabase (what `build()` runs) actually schedule it? Both counts matter:
    a record stored under a key the build never queries is silently ignored."""
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    tasks = tasks if tasks is not None else extract(fused, target)
    database = ms.database.JSONDatabase(work_dir=str(database_dir), module_equality="structural")
    with_record, without = [], []
    for task in tasks:
        found = database.query_tuning_record(task.dispatched[0], target, task.task_name)
        (with_record if found is not None else without).append(task.task_name)
    with target, database, tvm.transform.PassContext(opt_level=3):
        applied_mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(fused)
    scheduled = sorted(
        gv.name_hint for gv, f in applied_mod.functions.items()
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and bool(f.attrs.get("tirx.is_scheduled", False))
    )
    return {"tasks_found": len(tasks), "tasks_with_record": len(with_record), "tasks_applied": len(scheduled),
            "tasks_without_record": sorted(without)}


# --------------------------------------------------------------------------- results

@dataclass
class TuneResult:
    folder: Path
    key: dict  # key.json: {"format", "graph_sha256", "target"}
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
              crash_tasks: Sequence[str] = (), log: Callable[[str], None] | None = None) -> TuneResult:
    """Tune any ONNX file (static shapes) for the host CPU (or `target`) into the database
    keyed by (model, target) under `root` (default RESULTS_DIR/tuning), until it holds
    `trials` measured candidates, in `rounds` rounds. Resumable: records, trials and seconds
    persist; calling again with a larger `trials` goes on from there.

    model: what the model is, kept in meta.json (default {"kind": "onnx", "name": stem});
    its "name" labels the folder. The key itself is (graph_sha256, target).
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
            _write_json(folder / KEY_FILE, key)
        work = folder / "work"
        work.mkdir(exist_ok=True)
        inputs_file = work / "inputs.npz"
        _save_inputs(inputs_file, onnx_path, inputs, seed)
        meta = read_meta(folder) or {"key": key, "tuning_s": 0.0, "wall_s": 0.0, "rounds": [],
                                     "failed_tasks": {}, "created": _now()}
        seen = meta.setdefault("onnx_sha256_seen", [])  # the exact files tuned with (weights may differ)
        if sha not in seen:
            seen.append(sha)
        meta["model"] = model
        meta["settings"] = {"cost_model": cost_model, "strategy": strategy, "task_scheduler": task_scheduler,
                            "trials_per_iter": trials_per_iter, "builder": builder, "seed": seed,
                            "tvm_num_threads": _cores(threads)}
        if retry_failed and meta["failed_tasks"]:
            log(f"retrying {len(meta['failed_tasks'])} failed task(s): {', '.join(meta['failed_tasks'])}")
            meta.setdefault("retried_failed", []).append({"at": _now(), "tasks": meta["failed_tasks"]})
            meta["failed_tasks"] = {}
        curve = read_curve(folder)
        job_base = {"onnx": str(onnx_path), "folder": str(folder), "target": target_str, "inputs": str(inputs_file),
                    "cost_model": cost_model, "strategy": strategy, "task_scheduler": task_scheduler,
                    "trials_per_iter": trials_per_iter, "builder": builder, "builder_timeout_s": builder_timeout_s,
                    "runner_timeout_s": runner_timeout_s, "measure_s": measure_s, "crash_tasks": list(crash_tasks),
                    "focus": focus, "builders": builders, "weight_prepack": weight_prepack,
                    "threads": _cores(threads)}
        runner = _RoundRunner(folder, job_base, meta, curve, nice, round_timeout_s, log)
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
        meta["updated"] = _now()
        latest = curve[-1] if curve else {}
        untuned = meta.get("untuned_ms")
        tuned = latest.get("latency_ms") if latest.get("trials", 0) > 0 else None
        meta["break_even"] = break_even(untuned, tuned, meta["tuning_s"], meta.get("ort_ms"))
        _write_json(folder / META_FILE, meta)
    if tuned is not None and untuned is not None and tuned >= untuned:
        notes.append(f"tuned ({tuned:.4g} ms) is not faster than untuned ({untuned:.4g} ms)")
    return TuneResult(folder=folder, key=key, model=model, trials=meta["trials"], tuning_s=meta["tuning_s"],
                      rounds_run=rounds_run, tasks=meta.get("tasks", []), failed_tasks=meta["failed_tasks"],
                      coverage=runner.last_coverage or latest.get("coverage", {}), curve=curve,
                      untuned_ms=untuned, tuned_ms=tuned, ort_ms=meta.get("ort_ms"),
                      break_even=meta["break_even"], notes=notes + runner.notes)


class _RoundRunner:
    """Runs worker subprocesses for rounds, blames and skips crashing tasks, keeps meta/curve."""

    def __init__(self, folder: Path, job_base: dict, meta: dict, curve: list[dict], nice: int,
                 round_timeout_s: float | None, log: Callable[[str], None]):
        self.folder, self.job_base, self.meta, self.curve = folder, job_base, meta, curve
        self.nice, self.round_timeout_s, self.log = nice, round_timeout_s, log
        self.notes: list[str] = []
        self.last_coverage: dict | None = None

    # one worker ------------------------------------------------------------------------
    def _run_worker(self, job: dict, label: str) -> tuple[dict, str | None, float]:
        """Run one worker; returns (its output, failure reason or None, wall seconds)."""
        work = self.folder / "work"
        job_file, out_file, log_file = work / f"{label}.job.json", work / f"{label}.out.json", work / f"{label}.log"
        job_file.write_text(json.dumps(job))
        out_file.unlink(missing_ok=True)
        timeout = self.round_timeout_s or 600.0 + 10.0 * max(job.get("trials", 0), 0)
        start = time.perf_counter()
        with open(log_file, "w") as lf:
            # TVM's x86 runtime otherwise starts half as many threads as there are CPUs (one on
            # a 2-vCPU VM), and candidates would be timed with fewer threads than the target's
            # num-cores, which is what the tuned build will run with (see backends.tvm).
            env = {**os.environ, "TVM_NUM_THREADS": str(job["threads"])}
            proc = subprocess.Popen([sys.executable, "-m", "chipbench.tuning", "worker", str(job_file), str(out_file)],
                                    stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, preexec_fn=_nicer(self.nice))
            try:
                proc.wait(timeout=timeout)
                reason = None if proc.returncode == 0 else _exit_reason(proc.returncode, log_file)
            except subprocess.TimeoutExpired:
                _killpg(proc)
                reason = f"timed out after {timeout:g} s (killed)"
            except BaseException:  # interrupted (Ctrl-C, SIGTERM): stop the worker, keep what it did
                _killpg(proc)
                self._account({}, time.perf_counter() - start)
                self._save()
                raise
        wall = time.perf_counter() - start
        try:
            out = json.loads(out_file.read_text())
        except (OSError, ValueError):
            out = {}
        if reason is None and out.get("stage") != "done":
            reason = "worker ended without finishing"
        if reason is not None:
            out["blamed_task"] = _blame(log_file)
        return out, reason, wall

    def _job(self, trials: int, seed: int, **extra: Any) -> dict:
        return {**self.job_base, "trials": trials, "seed": seed,
                "exclude": sorted(self.meta["failed_tasks"]), **extra}

    def _account(self, out: dict, wall: float, measure_s: float | None = None) -> float:
        """Tuning seconds of a worker: its wall time less the time it spent measuring latency."""
        spent = max(0.0, wall - float(measure_s if measure_s is not None else out.get("measure_s", 0.0)))
        self.meta["tuning_s"] = self.meta.get("tuning_s", 0.0) + spent
        self.meta["wall_s"] = self.meta.get("wall_s", 0.0) + wall
        return spent

    def _save(self) -> None:
        self.meta["trials"] = record_count(self.folder)
        self.meta["updated"] = _now()
        _write_json(self.folder / META_FILE, self.meta)
        _write_json(self.folder / CURVE_FILE, self.curve)

    def _fail_task(self, task: str, reason: str, round_no: int) -> None:
        self.meta["failed_tasks"][task] = {"reason": reason, "round": round_no, "at": _now()}
        self.log(f"  task {task} failed ({reason}); recorded, the rest goes on")

    def _point(self, out: dict, round_no: int) -> None:
        if out.get("latency_ms") is None:
            return
        point = {"round": round_no, "trials": record_count(self.folder), "tuning_s": round(self.meta["tuning_s"], 3),
                 "latency_ms": out["latency_ms"], "latency_min_ms": out.get("latency_min_ms"),
                 "tvm_num_threads": out.get("tvm_num_threads"),
                 "coverage": out.get("coverage"),
                 "rel_l2_vs_ort": out.get("rel_l2_vs_ort"), "at": _now()}
        self.curve.append(point)
        self.last_coverage = out.get("coverage")
        cov = out.get("coverage") or {}
        self.log(f"  round {round_no}: {point['trials']} trials, {point['tuning_s']:.0f} s tuning → "
                 f"{point['latency_ms']:.4g} ms (tasks with a record {cov.get('tasks_with_record', 0)}/"
                 f"{cov.get('tasks_found', 0)}, applied {cov.get('tasks_applied', 0)})")

    def _systemic_failure(self, tasks: list[str], reason: str, round_info: dict) -> None:
        """Every task died the same way: the tuner is broken (a cost model, a missing package),
        not the tasks. Forget the blame, so that a rerun retries them, and stop."""
        for t in tasks:
            self.meta["failed_tasks"].pop(t, None)
        self.meta["rounds"].append({**round_info, "ended": _now(), "error": reason})
        self._save()
        raise TuningError(f"every task failed the same way, so the tuner is at fault: {reason} "
                          f"(logs: {self.folder / 'work'})")

    def _baseline(self, out: dict) -> None:
        """Round 0: untuned latency and ONNX Runtime's, measured by the first worker."""
        self.meta.update(untuned_ms=out["untuned_ms"], ort_ms=out.get("ort_ms"))
        self.curve.insert(0, {"round": 0, "trials": 0, "tuning_s": 0.0, "latency_ms": out["untuned_ms"],
                              "latency_min_ms": out.get("untuned_min_ms"), "ort_ms": out.get("ort_ms"),
                              "tvm_num_threads": out.get("tvm_num_threads"),
                              "untuned": True, "at": _now()})
        self.log(f"  untuned {out['untuned_ms']:.4g} ms"
                 + (f", ONNX Runtime {out['ort_ms']:.4g} ms" if out.get("ort_ms") else "")
                 + f"; {len(out.get('tasks', []))} task(s)")
        self._save()

    def round(self, trials: int, seed: int) -> int:
        """Tune `trials` more (the first worker also measures the untuned baseline); returns how
        many records it added. A crashing task is blamed, recorded and skipped, and the round
        goes on with the rest."""
        round_no = len(self.meta["rounds"]) + 1
        before = record_count(self.folder)
        started, spent_total, attempt, events = _now(), 0.0, 0, []
        while True:
            left = trials - (record_count(self.folder) - before)
            tasks = [t["name"] for t in self.meta.get("tasks", [])]
            active = [t for t in tasks if t not in self.meta["failed_tasks"]]
            baseline = "untuned_ms" not in self.meta
            if not baseline and (left <= 0 or (tasks and not active)):
                break
            attempt += 1
            self.log(f"round {round_no}" + (f" (attempt {attempt})" if attempt > 1 else "")
                     + f": {max(left, 0)} trials" + (", after measuring untuned latency" if baseline else ""))
            out, reason, wall = self._run_worker(self._job(max(left, 0), seed + attempt, baseline=baseline),
                                                 f"round-{round_no}.{attempt}")
            spent_total += self._account(out, wall)
            if out.get("tasks"):
                self.meta["tasks"] = out["tasks"]
            if baseline and out.get("untuned_ms") is not None:
                self._baseline(out)
            if reason is None:
                self._point(out, round_no)
                break
            tasks = [t["name"] for t in self.meta.get("tasks", [])]
            active = [t for t in tasks if t not in self.meta["failed_tasks"]]
            stage = out.get("stage")
            blamed = out.get("blamed_task") if stage == "tune" else None
            events.append({"attempt": attempt, "reason": reason, "stage": stage, "blamed": blamed})
            if stage != "tune":
                msg = f"round {round_no}: worker failed at stage '{stage}': {reason} (log: {self.folder}/work)"
                if baseline and "untuned_ms" not in self.meta:
                    self._save()
                    raise TuningError(msg)
                self.notes.append(msg)
                break
            if blamed and blamed in active:
                self._fail_task(blamed, reason, round_no)
                if _systemic(self.meta["failed_tasks"], tasks, reason):
                    self._systemic_failure(tasks, reason, {"round": round_no, "started": started, "attempts": attempt,
                                                           "trials": record_count(self.folder) - before,
                                                           "tuning_s": round(spent_total, 3), "events": events})
                continue
            # Nobody to blame from the log: each task alone, in its own worker.
            self.log(f"  worker failed ({reason}) and no task could be blamed; isolating each task")
            share = max(1, math.ceil(left / max(len(active), 1)))
            for i, task in enumerate(active):
                o, r, w = self._run_worker(self._job(share, seed + 100 + i, only=[task], measure=False),
                                           f"round-{round_no}.{attempt}.{i}")
                spent_total += self._account(o, w)
                if r is not None:
                    self._fail_task(task, r, round_no)
            last = self.meta["failed_tasks"].get(active[-1], {}).get("reason", "") if active else ""
            if active and _systemic(self.meta["failed_tasks"], active, last):
                self._systemic_failure(active, last, {"round": round_no, "started": started, "attempts": attempt,
                                                      "trials": record_count(self.folder) - before,
                                                      "tuning_s": round(spent_total, 3), "events": events})
            out, reason, wall = self._run_worker(self._job(0, seed), f"round-{round_no}.measure")
            self._account(out, wall, measure_s=wall)
            if reason is None:
                self._point(out, round_no)
            else:
                self.notes.append(f"round {round_no}: measuring latency failed: {reason}")
            break
        added = record_count(self.folder) - before
        self.meta["rounds"].append({"round": round_no, "started": started, "ended": _now(), "trials": added,
                                    "tuning_s": round(spent_total, 3), "attempts": attempt, "events": events,
                                    "cost_model": self.job_base["cost_model"], "strategy": self.job_base["strategy"]})
        self._save()
        return added


def _systemic(failed: dict[str, dict], tasks: list[str], reason: str) -> bool:
    return len(tasks) > 1 and all(t in failed and failed[t]["reason"] == reason for t in tasks)


def _blame(log_file: Path) -> str | None:
    """The task the MetaSchedule task scheduler was last working on, from the worker's log."""
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return None
    hits = re.findall(r'(?:Initializing Task|TaskScheduler picks Task) #\d+: "?([^"\s]+)"?', text)
    return hits[-1] if hits else None


def _exit_reason(code: int, log_file: Path) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"worker killed by {signal.Signals(-code).name}"
        return f"worker killed by signal {-code}"
    try:
        lines = [ln.strip() for ln in log_file.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    return f"worker exit code {code}: {lines[-1][:300] if lines else 'no output'}"


def _killpg(proc: subprocess.Popen) -> None:
    """The worker runs in its own session (its builders and runner with it): kill them all."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


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


def _nicer(n: int):
    if n <= 0:
        return None
    return lambda: os.nice(n)


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


def ship(folder: Path, dest_root: Path | None = None, prune: bool = True) -> Path:
    """Copy a database into results/tuned/<target-slug>/<model>-<key>/ as a shareable artifact
    (TopHub-style): key.json, meta.json, curve.json and the records, by default pruned to the
    best record per task (MetaSchedule's `dump_pruned`), which is all a build applies."""
    import shutil

    key = read_key(folder)
    if key is None:
        raise TuningError(f"{folder}: no key.json")
    folder = Path(folder)
    name = read_meta(folder).get("model", {}).get("name") or folder.name.rsplit("-", 1)[0]
    dest = database_folder(dest_root or shipped_root(), key, name)
    dest.mkdir(parents=True, exist_ok=True)
    for name in RECORD_FILES:
        (dest / name).unlink(missing_ok=True)
        (dest / f"{name}.gz").unlink(missing_ok=True)
    if prune:
        from tvm.s_tir import meta_schedule as ms

        source = ms.database.JSONDatabase(work_dir=str(folder), module_equality="structural")
        source.dump_pruned(ms.database.JSONDatabase(work_dir=str(dest), module_equality="structural"))
    else:
        for name in RECORD_FILES:
            shutil.copy2(folder / name, dest / name)
    shutil.copy2(folder / KEY_FILE, dest / KEY_FILE)
    if (folder / CURVE_FILE).is_file():
        shutil.copy2(folder / CURVE_FILE, dest / CURVE_FILE)
    meta = read_meta(folder)
    meta["shipped"] = {"from": f"{folder.parent.name}/{folder.name}", "at": _now(), "pruned_to_best": prune,
                       "records": record_count(dest)}
    _write_json(dest / META_FILE, meta)
    for name in RECORD_FILES:  # gzipped in the source tree; `unpacked` restores them for use
        (dest / f"{name}.gz").write_bytes(gzip.compress((dest / name).read_bytes(), mtime=0))
        (dest / name).unlink()
    return dest


def _sha256_file(path: Path) -> str:
    from chipbench.prepare import sha256_file

    return sha256_file(Path(path))


def _cores(threads: int | None) -> int:
    return threads or len(os.sched_getaffinity(0))


def _tvm_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("apache-tvm")
    except Exception:
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, data: Any) -> None:
    from chipbench.paths import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True, default=str))


# --------------------------------------------------------------------------- the worker

def _worker(job: dict, out_path: Path) -> None:
    """One round in a fresh process: extract tasks, [measure untuned], tune, measure tuned."""
    out: dict[str, Any] = {"stage": "start", "measure_s": 0.0, "tvm_num_threads": os.environ.get("TVM_NUM_THREADS")}

    def save(stage: str | None = None) -> None:
        if stage:
            out["stage"] = stage
        out_path.write_text(json.dumps(out, default=str))

    save()
    load_cpu_intrinsics()
    import numpy as np
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from chipbench.backends.tvm import import_onnx

    folder = Path(job["folder"])
    target = tvm.target.Target(job["target"])
    mod, weights = import_onnx(Path(job["onnx"]))
    prepack = bool(job.get("weight_prepack", False))
    fused = fuse_for_tuning(mod, target, prepack)
    tasks = extract(fused, target)
    out["tasks"] = [{"name": t.task_name, "weight": int(t.weight)} for t in tasks]
    with np.load(job["inputs"]) as data:
        inputs = {k: data[k] for k in data.files}
    save("extracted")

    ort_out = None
    if job.get("baseline"):
        save("measure")
        t0 = time.perf_counter()
        out["untuned_ms"], _, out["untuned_min_ms"] = _latency(mod, weights, target, None, inputs, job["measure_s"])
        out["ort_ms"], ort_out = _ort_latency(job["onnx"], inputs, job["measure_s"])
        out["measure_s"] += time.perf_counter() - t0

    trials = int(job.get("trials", 0))
    only, exclude = job.get("only"), set(job.get("exclude", []))
    chosen = [t for t in tasks if (only is None or t.task_name in only) and t.task_name not in exclude]
    if trials > 0 and chosen:
        save("tune")
        t0 = time.perf_counter()
        database = ms.database.JSONDatabase(work_dir=str(folder), module_equality="structural")
        chosen, out["selection"] = _select_tasks(chosen, target, database, float(job.get("focus", 0.9)))
        _tune_tasks(chosen, target, database, job, trials)
        out["tune_s"] = time.perf_counter() - t0
        save()

    if job.get("measure", True):
        save("measure")
        t0 = time.perf_counter()
        out["coverage"] = coverage(fused, target, folder, tasks)
        if trials > 0 or not job.get("baseline"):
            out["latency_ms"], outputs, out["latency_min_ms"] = _latency(mod, weights, target, folder, inputs,
                                                                         job["measure_s"], prepack)
            ref = ort_out if ort_out is not None else _ort_outputs(job["onnx"], inputs)
            if ref is not None:
                out["rel_l2_vs_ort"] = max(_rel_l2(a, b) for a, b in zip(outputs, ref))
        out["measure_s"] += time.perf_counter() - t0
    save("done")


def _select_tasks(tasks: list, target: Any, database: Any, focus: float) -> tuple[list, dict]:
    """Which tasks a round tunes. MetaSchedule's task scheduler first warms up every task it is
    given, in order, so a round of R trials over many tasks would spread R evenly over trivial
    reshapes and heavy convolutions alike. So: every task without a measured record (first),
    then the tasks with a record that make up `focus` of the model's estimated time (best
    record x weight), heaviest first; the rest keep the record they have."""
    untuned, timed = [], []
    for task in tasks:
        record = database.query_tuning_record(task.dispatched[0], target, task.task_name)
        if record is None or not record.run_secs:
            untuned.append(task)
        else:
            secs = sum(float(x) for x in record.run_secs) / len(record.run_secs)
            timed.append((secs * float(task.weight), task))
    timed.sort(key=lambda st: -st[0])
    total = sum(st[0] for st in timed)
    picked, acc = [], 0.0
    for secs, task in timed:
        if acc < focus * total or not picked:
            picked.append(task)
            acc += secs
    chosen = untuned + picked
    info = {"untuned": [t.task_name for t in untuned],
            "focus": [t.task_name for t in picked],
            "left_alone": [t.task_name for _, t in timed if t not in picked],
            "estimated_ms": total * 1000.0}
    return chosen, info


def _tune_tasks(chosen: list, target: Any, database: Any, job: dict, trials: int) -> None:
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir

    work = Path(job["folder"]) / "work"
    cores = int(job["threads"])
    loggers = get_loggers_from_work_dir(str(work), [t.task_name for t in chosen])
    contexts, weights = [], []
    for i, (task, logger) in enumerate(zip(chosen, loggers)):
        space: Any = "post-order-apply"
        strategy: Any = job["strategy"]
        if strategy == "evolutionary-lite":  # a cheaper search, when the cost model is random anyway
            strategy = ms.search_strategy.EvolutionarySearch(population_size=128, init_min_unmeasured=16,
                                                             genetic_num_iters=2)
        if task.task_name in job.get("crash_tasks", []):
            space = ms.space_generator.ScheduleFn(sch_fn=_abort)  # fault injection (tests)
        contexts.append(ms.TuneContext(mod=task.dispatched[0], target=target, space_generator=space,
                                       search_strategy=strategy, task_name=task.task_name, logger=logger,
                                       rand_state=int(job["seed"]) * 1000 + i + 1, num_threads=cores).clone())
        weights.append(float(task.weight))
    per_iter = max(1, min(int(job["trials_per_iter"]), math.ceil(trials / len(contexts))))
    if job.get("builder") == "local":  # MetaSchedule's own (needs cloudpickle)
        builder = ms.builder.LocalBuilder(max_workers=cores, timeout_sec=float(job["builder_timeout_s"]),
                                          f_build=build_without_gpu_intrinsics)
        runner = ms.runner.LocalRunner(timeout_sec=float(job["runner_timeout_s"]))
    else:
        builder, runner = _make_builder_runner(int(job.get("builders") or cores), float(job["builder_timeout_s"]),
                                               float(job["runner_timeout_s"]))
    cost_model = ms.cost_model.CostModel.create(job["cost_model"], num_tuning_cores=cores, tree_method="auto")
    try:
        ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(work), max_trials_global=trials,
                      num_trials_per_iter=per_iter, builder=builder, runner=runner, database=database,
                      cost_model=cost_model, task_scheduler=job["task_scheduler"])
    finally:
        for pooled in (builder, runner):
            if hasattr(pooled, "pool") and isinstance(pooled.pool, _ProcessPool):
                pooled.pool.close()


# --------------------------------------------------------------------------- builder and runner

class _ProcessPool:
    """Persistent worker processes (`python -m chipbench.tuning ms-worker KIND`) that build or
    run MetaSchedule candidates, one request at a time each. A request that outlives its timeout
    gets its worker killed; a worker that crashes costs its one request; both are restarted.

    Why not MetaSchedule's LocalBuilder/LocalRunner: their PopenPool needs `cloudpickle`
    (which apache-tvm does not install), LocalBuilder restarts its pool (an `import tvm` per
    worker) for every batch, and its default build imports every target's tensor intrinsics
    (60-140 s per worker here, longer than the 30 s build timeout)."""

    def __init__(self, kind: str, size: int, timeout_s: float, startup_timeout_s: float = 900.0):
        self.kind, self.size, self.timeout_s, self.startup_timeout_s = kind, size, timeout_s, startup_timeout_s
        self.procs: list[subprocess.Popen | None] = [None] * size
        self.ready: list[bool] = [False] * size
        for i in range(size):  # start now: their `import tvm` overlaps the search for candidates
            self._spawn(i)

    def _spawn(self, i: int) -> None:
        self.procs[i] = subprocess.Popen([sys.executable, "-m", "chipbench.tuning", "ms-worker", self.kind],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None)
        self.ready[i] = False

    def _start(self, i: int) -> subprocess.Popen:
        """Worker i, started if needed and ready for a request."""
        proc = self.procs[i]
        if proc is None or proc.poll() is not None:
            self._spawn(i)
            proc = self.procs[i]
        if not self.ready[i]:
            status, value = self._recv(proc, self.startup_timeout_s)
            if status != "ready":
                self._kill(proc)
                self.procs[i] = None
                raise RuntimeError(f"{self.kind} worker did not start: {status} {value or ''}")
            self.ready[i] = True
        return proc

    @staticmethod
    def _send(proc: subprocess.Popen, request: Any) -> None:
        import pickle
        import struct

        data = pickle.dumps(request)
        proc.stdin.write(struct.pack("<Q", len(data)) + data)
        proc.stdin.flush()

    @staticmethod
    def _recv(proc: subprocess.Popen, timeout: float | None) -> tuple[str, Any]:
        import pickle
        import select
        import struct

        fd = proc.stdout
        if timeout is not None:
            ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
            if not ready:
                return "timeout", None
        head = fd.read(8)
        if len(head) < 8:
            proc.wait()
            code = proc.returncode
            how = f"killed by {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
            return "crashed", f"{how}"
        (size,) = struct.unpack("<Q", head)
        return pickle.loads(fd.read(size))

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()

    def map(self, requests: list[Any]) -> list[tuple[str, Any]]:
        """Results in order: ("ok", value) or ("error", message)."""
        import select

        results: list[tuple[str, Any] | None] = [None] * len(requests)
        pending = list(range(len(requests)))
        busy: dict[int, tuple[int, float]] = {}  # worker -> (request, deadline)
        while pending or busy:
            for i in range(self.size):
                if pending and i not in busy:
                    proc = self._start(i)
                    r = pending.pop(0)
                    try:
                        self._send(proc, requests[r])
                    except (BrokenPipeError, OSError) as exc:
                        results[r] = ("error", f"{self.kind} worker: {exc}")
                        self.procs[i] = None
                        continue
                    busy[i] = (r, time.monotonic() + self.timeout_s)
            if not busy:
                continue
            wait = max(0.0, min(d for _, d in busy.values()) - time.monotonic())
            fds = {self.procs[i].stdout: i for i in busy}
            ready, _, _ = select.select(list(fds), [], [], wait)
            for f in ready:
                i = fds[f]
                r, _ = busy.pop(i)
                status, value = self._recv(self.procs[i], None)
                if status == "crashed":
                    results[r] = ("error", f"{self.kind} worker crashed ({value})")
                    self.procs[i] = None
                else:
                    results[r] = (status, value)
            now = time.monotonic()
            for i, (r, deadline) in list(busy.items()):
                if now >= deadline:
                    busy.pop(i)
                    self._kill(self.procs[i])
                    self.procs[i] = None
                    results[r] = ("error", f"{self.kind}: timeout, killed after {self.timeout_s:g} s")
        return [r if r is not None else ("error", "lost") for r in results]

    def close(self) -> None:
        for proc in self.procs:
            if proc is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._kill(proc)
        self.procs = [None] * self.size


def _make_builder_runner(builders: int, builder_timeout_s: float, runner_timeout_s: float,
                         evaluator: tuple[int, int, int, bool] = (3, 1, 100, False)) -> tuple[Any, Any]:
    """A MetaSchedule Builder and Runner backed by `_ProcessPool`s."""
    import tvm
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.runner import PyRunner
    from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture

    @derived_object
    class PoolBuilder(PyBuilder):
        def __init__(self) -> None:
            super().__init__()
            self.pool = _ProcessPool("build", builders, builder_timeout_s)

        def build(self, build_inputs):
            requests = [(tvm.ir.save_json(b.mod), str(b.target)) for b in build_inputs]
            out = []
            for status, value in self.pool.map(requests):
                out.append(BuilderResult(value, None) if status == "ok" else BuilderResult(None, str(value)))
            return out

    @derived_object
    class PoolRunner(PyRunner):
        def __init__(self) -> None:
            super().__init__()
            self.pool = _ProcessPool("run", 1, runner_timeout_s)  # one at a time: measurements

        def run(self, runner_inputs):
            requests = [(str(r.artifact_path), str(r.device_type),
                         json.loads(json.dumps([a.as_json() for a in r.args_info])), evaluator)
                        for r in runner_inputs]
            return [LocalRunnerFuture(res=[float(c) for c in value]) if status == "ok"
                    else LocalRunnerFuture(error_message=str(value)) for status, value in self.pool.map(requests)]

    return PoolBuilder(), PoolRunner()


def _ms_worker(kind: str) -> int:
    """Serve build or run requests on stdin/stdout (see `_ProcessPool`)."""
    import pickle
    import struct
    import traceback

    proto = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything else printed to stdout (LLVM, TVM) goes to stderr, not the protocol
    stdin = sys.stdin.buffer

    def reply(obj: Any) -> None:
        data = pickle.dumps(obj)
        proto.write(struct.pack("<Q", len(data)) + data)
        proto.flush()

    import tvm

    if kind == "build":
        from tvm.support.tar import tar

        def handle(req):
            mod_json, target = req
            rt_mod = build_without_gpu_intrinsics(tvm.ir.load_json(mod_json), tvm.target.Target(target), None)
            path = os.path.join(tempfile.mkdtemp(prefix="chipbench-ms-"), "tvm_tmp_mod." + tar.output_format)
            rt_mod.export_library(path, fcompile=tar)
            return path
    else:
        from tvm.s_tir.meta_schedule.runner.config import EvaluatorConfig
        from tvm.s_tir.meta_schedule.runner.local_runner import (
            default_alloc_argument, default_cleanup, default_run_evaluator)

        def handle(req):
            path, device_type, args_info, evaluator = req
            try:
                rt_mod = tvm.runtime.load_module(path)
                device = tvm.runtime.device(device_type, 0)
                args = default_alloc_argument(device, args_info, 1)
                return list(default_run_evaluator(rt_mod, device, EvaluatorConfig(*evaluator), args))
            finally:
                default_cleanup()

    reply(("ready", os.getpid()))
    while True:
        head = stdin.read(8)
        if len(head) < 8:
            return 0
        (size,) = struct.unpack("<Q", head)
        req = pickle.loads(stdin.read(size))
        try:
            reply(("ok", handle(req)))
        except Exception as exc:  # a candidate that fails to build or run: its error, not ours
            reply(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"[:4000]))


def _abort(_sch: Any) -> None:
    os.abort()


def _latency(mod: Any, weights: list, target: Any, database_dir: Path | None, inputs: dict,
             min_s: float, weight_prepack: bool = False) -> tuple[float, list, float]:
    """Median latency (ms) of the compiled module on the Relax VM, its outputs, and the minimum
    latency (ms; steadier than the median on a shared machine)."""
    import numpy as np
    import tvm

    from chipbench.backends.tvm import _to_numpy, build, load

    exe, _ = build(mod, target, database_dir, weight_prepack)
    dev = tvm.cpu()
    _vm, main, params = load(exe, weights, dev)
    args = [tvm.runtime.tensor(v, dev) for v in inputs.values()]  # saved in graph input order
    outputs = _to_numpy(main(*args, *params))
    samples = _time(lambda: main(*args, *params), min_s)
    return float(np.median(samples)) * 1000.0, outputs, float(np.min(samples)) * 1000.0


def _ort_latency(onnx_path: str, inputs: dict, min_s: float) -> tuple[float | None, list | None]:
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError:
        return None, None
    try:
        session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        feed = {i.name: inputs[i.name] for i in session.get_inputs()}
        outputs = session.run(None, feed)
        samples = _time(lambda: session.run(None, feed), min_s)
        return float(np.median(samples)) * 1000.0, outputs
    except Exception:
        return None, None


def _ort_outputs(onnx_path: str, inputs: dict) -> list | None:
    try:
        import onnxruntime as ort

        session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        return session.run(None, {i.name: inputs[i.name] for i in session.get_inputs()})
    except Exception:
        return None


def _rel_l2(a: Any, b: Any) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def _time(fn: Callable[[], Any], min_s: float, min_count: int = 5, max_s: float = 60.0) -> list[float]:
    fn()  # warm-up
    samples: list[float] = []
    begin = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        now = time.perf_counter()
        samples.append(now - t0)
        if (now - begin >= min_s and len(samples) >= min_count) or (now - begin >= max_s and len(samples) >= 3):
            return samples


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) == 3 and args[0] == "worker":
        _worker(json.loads(Path(args[1]).read_text()), Path(args[2]))
        return 0
    if len(args) == 2 and args[0] == "ms-worker" and args[1] in ("build", "run"):
        return _ms_worker(args[1])
    print("usage: python -m chipbench.tuning worker JOB.json OUT.json", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
