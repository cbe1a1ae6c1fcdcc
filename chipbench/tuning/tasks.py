"""The TVM side of tuning: task extraction from the fused module (`backends.tvm.fuse`), and
whether a database covers (and a build applies) every task."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


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
