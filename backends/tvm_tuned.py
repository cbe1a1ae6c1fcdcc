"""Apache TVM (Relax) for the host CPU with a MetaSchedule tuning database (`chipbench tune`).

Same import, pipeline and VM as `tvm-llvm`; the difference is the database `build()` applies.
The database is found by its key, {graph sha256 of the ONNX model without its weight values,
canonical target string}, compared exactly with each candidate's key.json (see
chipbench.tuning), in this order:

1. `spec.tuning_db` (`--tuning-db`): a database folder (its key must match exactly, or the
   cell is unsupported) or a root to search;
2. `spec.options["tuning_dirs"]`, then $CHIPBENCH_TUNING_DIRS (os.pathsep-separated roots);
3. `./results/tuning` (the default results dir's databases);
4. the shipped `results/tuned/` of the source tree (pre-tuned, per target).

No match is `Unsupported`, never a silent untuned build; a database with a record for none of
the model's tasks is `Unsupported` too. The record's details say how many tasks were found,
had a record and were actually scheduled, with the trials and tuning time behind them.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from chipbench.backends.base import Compiled, CompileSpec, ModelSource, Unsupported, register, require_precision
from chipbench.backends.tvm import TvmLlvm


@register("tvm-llvm-tuned")
class TvmLlvmTuned(TvmLlvm):
    description = "Apache TVM Relax, LLVM for the host CPU, MetaSchedule-tuned (database from `chipbench tune`)"
    precisions = ("fp32",)
    devices = ("cpu",)  # its databases are per target; over RPC the board's target would need its own

    def locate(self, source: ModelSource, spec: CompileSpec) -> tuple[Path, str, str]:
        """(database folder, graph sha256, canonical target) for this model and spec."""
        from chipbench import tuning

        target = tuning.canonical_target(spec.target, spec.threads)
        sha = tuning.graph_sha256(source.onnx_path)
        explicit = Path(spec.tuning_db) if spec.tuning_db else None
        if explicit is not None and (explicit / tuning.KEY_FILE).is_file():
            key = tuning.read_key(explicit)
            if not tuning.key_matches(key, sha, target):
                made_for = tuning.read_meta(explicit).get("model", {}).get("name", "?"), (key or {}).get("target", "?")
                raise Unsupported(f"tuning database {explicit} was made for {made_for[0]} on {made_for[1]}, "
                                  f"not {source.name} (graph sha256 {sha[:12]}) on {target}")
            return explicit, sha, target
        extra = [explicit] if explicit is not None else []
        extra += [Path(p) for p in spec.options.get("tuning_dirs", ())]
        roots = tuning.search_roots(extra)
        folder = tuning.find_database(sha, target, roots)
        if folder is None:
            raise Unsupported(
                f"no tuning database for {source.name} (graph sha256 {sha[:12]}) on target {target}; "
                f"run `chipbench tune -w {source.name} --trials N` (searched: {', '.join(map(str, roots))})")
        return folder, sha, target

    def compile(self, source: ModelSource, spec: CompileSpec) -> Compiled:
        import tvm

        from chipbench import tuning
        from chipbench.backends.tvm import fuse, import_onnx

        require_precision(self, spec, source)  # fp32: databases are tuned for the fp32 model
        folder, sha, target = self.locate(source, spec)
        database = tuning.unpacked(folder)  # shipped databases keep their records gzipped
        prepack = tuning.weight_prepack(tuning.read_key(folder))

        start = time.perf_counter()
        tuning.load_cpu_intrinsics()  # records may replay x86 tensorize steps
        mod, _ = import_onnx(source.onnx_path)
        tvm_target = tvm.target.Target(target)
        cov = tuning.coverage(fuse(mod, tvm_target, prepack), tvm_target, database)
        check_s = time.perf_counter() - start
        if cov["tasks_with_record"] == 0:
            raise Unsupported(f"tuning database {folder} has a record for none of the {cov['tasks_found']} "
                              f"task(s) of {source.name} (made with another TVM?); run `chipbench tune` again")

        options = {**spec.options, "metaschedule_db": database, "weight_prepack": prepack}
        compiled = super().compile(source, replace(spec, options=options))
        meta = tuning.read_meta(folder)
        compiled.tuning_db = tuning.records_digest(database)
        compiled.pipeline = f"{compiled.pipeline} ({cov['tasks_applied']}/{cov['tasks_found']} tasks tuned)"
        compiled.details.update({
            "untuned_backend": TvmLlvm.name,  # what the report sets this result beside
            "tuning_db_path": _shown(folder),
            "trials": meta.get("trials", tuning.record_count(folder)),  # tuning effort behind it
            "records": tuning.record_count(folder),  # fewer when shipped pruned to the best per task
            "tuning_s": meta.get("tuning_s"),
            "tuned_with_tvm": meta.get("tvm"),
            "tasks_found": cov["tasks_found"],
            "tasks_with_record": cov["tasks_with_record"],
            "tasks_applied": cov["tasks_applied"],
            "tasks_without_record": cov["tasks_without_record"],
            "failed_tasks": sorted(meta.get("failed_tasks", {})),
            "coverage_check_s": check_s,
            # The tuner's own measurements, so that a report can draw what tuning bought.
            "tuning_curve": [{k: point.get(k) for k in ("trials", "tuning_s", "latency_ms")}
                             for point in tuning.read_curve(folder) if point.get("latency_ms") is not None],
            "tuner_untuned_ms": meta.get("untuned_ms"),
            "tuner_ort_ms": meta.get("ort_ms"),
            "search": {k: meta.get("settings", {}).get(k) for k in ("cost_model", "strategy")},
        })
        return compiled


def _shown(folder: Path) -> str:
    """The database path as a reader can follow it: relative to the source tree when inside it
    (a shipped database), else as it is (cells run in a folder of their own)."""
    tree = Path(__file__).resolve().parent.parent
    try:
        return str(folder.resolve().relative_to(tree))
    except ValueError:
        return str(folder)
