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

No exact match: the database of the same graph tuned for the closest other x86 target is
transferred (chipbench.tuning.transfer: records that do not build for this target are dropped
and their tasks keep the default schedule), unless `spec.options["no_transfer"]`
(`--no-transfer`). No database at all, or transfer forbidden, is `Unsupported`, never a silent
untuned build; a database with a record for none of the model's tasks is `Unsupported` too.
`details["tuning"]` (the record's `tuning`) says how the schedules were obtained: tuned here
(perhaps seeded from another target's database) or transferred, from which key. The record's details say how many tasks were found,
had a record and were actually scheduled, with the trials and tuning time behind them.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from chipbench.backends import tvm_build_cache as build_cache
from chipbench.backends.base import Compiled, CompileSpec, ModelSource, Unsupported, register, require_precision
from chipbench.backends.tvm import TvmLlvm
from chipbench.paths import sha256_file


@register("tvm-llvm-tuned")
class TvmLlvmTuned(TvmLlvm):
    description = "Apache TVM Relax, LLVM for the host CPU, MetaSchedule-tuned (database from `chipbench tune`)"
    precisions = ("fp32",)
    devices = ("cpu",)  # its databases are per target; over RPC the board's target would need its own

    def locate(self, source: ModelSource, spec: CompileSpec) -> tuple[Path, str, str, dict | None]:
        """(database folder, graph sha256, canonical target, transfer.json or None) for this
        model and spec: the exact database, else a transferred one (unless no_transfer)."""
        from chipbench import tuning
        from chipbench.tuning import transfer

        target = tuning.canonical_target(spec.target, spec.threads)
        sha = tuning.graph_sha256(source.onnx_path)
        allowed = not spec.options.get("no_transfer")
        explicit = Path(spec.tuning_db) if spec.tuning_db else None
        if explicit is not None and (explicit / tuning.KEY_FILE).is_file():
            key = tuning.read_key(explicit)
            if tuning.key_matches(key, sha, target):
                return explicit, sha, target, None
            made = tuning.read_meta(explicit).get("model", {}).get("name", "?"), (key or {}).get("target", "?")
            source_db = transfer.find_source(sha, target, [explicit]) if allowed else None
            if source_db is None:
                why = "" if allowed or (key or {}).get("graph_sha256") != sha else " (--no-transfer)"
                raise Unsupported(f"tuning database {explicit} was made for {made[0]} on {made[1]}, "
                                  f"not {source.name} (graph sha256 {sha[:12]}) on {target}{why}")
            folder, info = transfer.materialize(source_db, target)
            return folder, sha, target, info
        extra = [explicit] if explicit is not None else []
        extra += [Path(p) for p in spec.options.get("tuning_dirs", ())]
        roots = tuning.search_roots(extra)
        folder = tuning.find_database(sha, target, roots)
        if folder is not None:
            return folder, sha, target, None
        source_db = transfer.find_source(sha, target, roots) if allowed else None
        if source_db is None:
            other = "" if allowed else (" (transfer from another target's database forbidden: --no-transfer)")
            raise Unsupported(
                f"no tuning database for {source.name} (graph sha256 {sha[:12]}) on target {target}{other}; "
                f"run `chipbench tune -w {source.name} --trials N` (searched: {', '.join(map(str, roots))})")
        folder, info = transfer.materialize(source_db, target)
        return folder, sha, target, info

    def compile(self, source: ModelSource, spec: CompileSpec) -> Compiled:
        import tvm

        from chipbench import tuning
        from chipbench.backends.tvm import fuse, import_onnx

        require_precision(self, spec, source)  # fp32: databases are tuned for the fp32 model
        folder, sha, target, transferred = self.locate(source, spec)
        database = tuning.unpacked(folder)  # shipped databases keep their records gzipped
        prepack = tuning.weight_prepack(transferred["source_key"] if transferred else tuning.read_key(folder))

        start = time.perf_counter()
        tuning.load_cpu_intrinsics()  # records may replay x86 tensorize steps
        tvm_target = tvm.target.Target(target)

        def coverage() -> dict:
            mod, _ = import_onnx(source.onnx_path)
            return tuning.coverage(fuse(mod, tvm_target, prepack), tvm_target, database)

        # the check extracts every task (seconds): kept with the build of exactly these inputs
        key = {**build_cache.build_key(source.onnx_path, tvm_target, tuning.records_digest(database), prepack),
               "coverage_recipe_sha256": sha256_file(Path(tuning.__file__).with_name("tasks.py"))}
        cov, cov_cached = build_cache.remembered("coverage", key, coverage)
        check_s = time.perf_counter() - start
        if cov["tasks_with_record"] == 0:
            dropped = f", {transferred['records_dropped']} record(s) dropped in transfer" if transferred else ""
            raise Unsupported(f"tuning database {folder} has a record for none of the {cov['tasks_found']} "
                              f"task(s) of {source.name} (made with another TVM?{dropped}); run `chipbench tune` again")

        options = {**spec.options, "metaschedule_db": database, "weight_prepack": prepack}
        compiled = super().compile(source, replace(spec, options=options))
        meta = tuning.read_meta(Path(transferred["source_folder"]) if transferred else folder)
        compiled.tuning_db = tuning.records_digest(database)
        how = f", transferred from {transferred['source_slug']}" if transferred else ""
        compiled.pipeline = f"{compiled.pipeline} ({cov['tasks_applied']}/{cov['tasks_found']} tasks tuned{how})"
        compiled.details.update({
            "untuned_backend": TvmLlvm.name,  # what the report sets this result beside
            "tuning": tuning_provenance(folder, transferred, meta, cov),
            "tuning_db_path": _shown(Path(transferred["source_folder"]) if transferred else folder),
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
            "coverage_cached": cov_cached,
            # The tuner's own measurements, so that a report can draw what tuning bought.
            "tuning_curve": [{k: point.get(k) for k in ("trials", "tuning_s", "latency_ms")}
                             for point in tuning.read_curve(folder) if point.get("latency_ms") is not None],
            "tuner_untuned_ms": meta.get("untuned_ms"),
            "tuner_ort_ms": meta.get("ort_ms"),
            "search": {k: meta.get("settings", {}).get(k) for k in ("cost_model", "strategy")},
        })
        return compiled


def tuning_provenance(folder: Path, transferred: dict | None, meta: dict, cov: dict) -> dict:
    """The record's `tuning`: how the schedules were obtained. provenance "tuned-here" (the
    exact key; `seeded_from` when `chipbench tune` started from a transferred database) or
    "transferred"; the source database's key and target; records dropped because they do not
    build here; tasks left with the default schedule (found, but no record applied)."""
    from chipbench import tuning

    tasks_default = cov["tasks_found"] - cov["tasks_applied"]
    if transferred:
        return {"provenance": "transferred", "source_key": transferred["source_key"],
                "source_target": transferred["source_target"], "source_slug": transferred["source_slug"],
                "records_dropped": transferred["records_dropped"], "records_kept": transferred["records_kept"],
                "dropped_reasons": transferred.get("dropped_reasons", {}),
                "records_wider_than_native": transferred.get("records_wider_than_native", 0),
                "tasks_default": tasks_default}
    key = tuning.read_key(folder) or {}
    from chipbench.tuning.transfer import traits_of

    try:
        label = traits_of(key["target"]).label()
    except Exception:
        label = key.get("target")
    out = {"provenance": "tuned-here", "source_key": key, "source_target": label,
           "source_slug": tuning.target_slug(key.get("target", "")), "records_dropped": 0,
           "tasks_default": tasks_default}
    if meta.get("seeded_from"):
        out["seeded_from"] = meta["seeded_from"]
    return out


def _shown(folder: Path) -> str:
    """The database path as a reader can follow it: relative to the source tree when inside it
    (a shipped database), else as it is (cells run in a folder of their own)."""
    tree = Path(__file__).resolve().parent.parent
    try:
        return str(folder.resolve().relative_to(tree))
    except ValueError:
        return str(folder)
