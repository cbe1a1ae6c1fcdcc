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
        work/                           worker logs, MetaSchedule logs, inputs, the XGBoost cost
                                        model carried across rounds (never shipped)

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
ONNX file and the target, and take the folder whose key.json equals it (one tuned with weight
prepacking first).

Tuning runs in rounds (`session`, `rounds`), each in a worker subprocess (`worker`, run as
`python -m chipbench.tuning worker ...`). The worker extracts tasks from the fused module (the
passes `build()` uses, so database keys match), tunes R trials with MetaSchedule (builder and
runner in their own process pools, `pool`, so a candidate that crashes or hangs costs one
measurement), then compiles with the database and measures latency. A worker that dies (a
crash inside MetaSchedule itself) is blamed on the task it was working on (from the task
scheduler's log); that task is recorded as failed and the round goes on without it. When no
task can be blamed, each task is retried in its own worker to find the culprit.
"""
from chipbench.tuning.database import (CURVE_FILE, ENV_DIRS, KEY_FILE, KEY_FORMAT, LEGACY_KEY_FORMAT, META_FILE,
                                       RECORD_FILES, SHIPPED_FILES, TUNING_SUBDIR, TuningError, candidate_folders,
                                       canonical_target, database_folder, database_key, find_database, graph_sha256,
                                       key_matches, read_curve, read_key, read_meta, record_count, records_digest,
                                       search_roots, ship, shipped_root, target_slug, unpacked, weight_prepack)
from chipbench.tuning.session import (COST_MODELS, STRATEGIES, TuneResult, break_even, onnx_inputs,
                                      resolve_cost_model, tune, tune_onnx)
from chipbench.tuning.tasks import build_without_gpu_intrinsics, coverage, extract, load_cpu_intrinsics

__all__ = [
    "COST_MODELS", "CURVE_FILE", "ENV_DIRS", "KEY_FILE", "KEY_FORMAT", "LEGACY_KEY_FORMAT", "META_FILE",
    "RECORD_FILES", "SHIPPED_FILES", "STRATEGIES", "TUNING_SUBDIR", "TuneResult", "TuningError", "break_even",
    "build_without_gpu_intrinsics", "candidate_folders", "canonical_target", "coverage", "database_folder",
    "database_key", "extract", "find_database", "graph_sha256", "key_matches",
    "load_cpu_intrinsics", "onnx_inputs", "read_curve", "read_key", "read_meta", "record_count", "records_digest",
    "resolve_cost_model", "search_roots", "ship", "shipped_root", "target_slug", "tune", "tune_onnx", "unpacked",
    "weight_prepack",
]
