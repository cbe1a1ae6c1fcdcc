"""One round in a fresh process (`python -m chipbench.tuning worker JOB OUT`): extract tasks,
[measure untuned], tune with MetaSchedule, measure the tuned build."""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chipbench.tuning.database import COST_MODEL_FILE
from chipbench.tuning.pool import ProcessPool, make_builder_runner
from chipbench.tuning.tasks import build_without_gpu_intrinsics, coverage, extract, load_cpu_intrinsics


def run_round(job: dict, out_path: Path) -> None:
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

    from chipbench.backends.tvm import fuse, import_onnx

    folder = Path(job["folder"])
    target = tvm.target.Target(job["target"])
    mod, weights = import_onnx(Path(job["onnx"]))
    prepack = bool(job.get("weight_prepack", False))
    fused = fuse(mod, target, prepack)  # what build() applies the database to: task keys match
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
        if job.get("seed_db"):
            out["seeded"] = _seed(chosen, target, database, job)
            save()
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


def _seed(tasks: list, target: Any, database: Any, job: dict) -> dict:
    """Start from a transferred database (`job["seed_db"]`, chipbench.tuning.transfer): each
    task without a record here gets that database's record for it, built and timed here by the
    builder and runner the search uses, and committed with this machine's run times (the other
    machine's are never kept). MetaSchedule's evolutionary search draws its initial population
    from the best measured records in the database, so the search starts from these schedules.
    Returns {"seeded": n, "failed": n, "tasks": [names], "errors": {task: why}}."""
    from tvm.s_tir import meta_schedule as ms

    seeds = ms.database.JSONDatabase(work_dir=str(job["seed_db"]), module_equality="structural")
    todo = []
    for task in tasks:
        mod = task.dispatched[0]
        if database.query_tuning_record(mod, target, task.task_name) is None:
            record = seeds.query_tuning_record(mod, target, task.task_name)
            if record is not None:
                todo.append((task, record, record.as_measure_candidate()))
    if not todo:
        return {"seeded": 0, "failed": 0, "tasks": []}
    builder, runner = make_builder_runner(int(job.get("builders") or job["threads"]), float(job["builder_timeout_s"]),
                                           float(job["runner_timeout_s"]))
    seeded: list[str] = []
    errors: dict[str, str] = {}
    try:
        built = builder.build([ms.builder.BuilderInput(c.sch.mod, target) for _, _, c in todo])
        errors.update({t.task_name: f"build: {b.error_msg}"[:300] for (t, _, _), b in zip(todo, built) if b.error_msg})
        ok = [(t, r, c, b) for (t, r, c), b in zip(todo, built) if b.error_msg is None]
        futures = runner.run([ms.runner.RunnerInput(b.artifact_path, "cpu", c.args_info)
                              for _, _, c, b in ok])
        for (task, record, candidate, _), future in zip(ok, futures):
            result = future.result()
            if result.error_msg is None and result.run_secs:
                workload = database.commit_workload(task.dispatched[0])
                database.commit_tuning_record(ms.database.TuningRecord(record.trace, workload, result.run_secs,
                                                                       target, candidate.args_info))
                seeded.append(task.task_name)
            else:
                errors[task.task_name] = f"run: {result.error_msg or 'no run time'}"[:300]
    finally:
        for pooled in (builder, runner):
            pooled.pool.close()
    return {"seeded": len(seeded), "failed": len(todo) - len(seeded), "tasks": seeded, "errors": errors}


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
        if strategy == "evolutionary-lite":  # cheaper than the default population 512, 4 generations
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
        builder, runner = make_builder_runner(int(job.get("builders") or cores), float(job["builder_timeout_s"]),
                                               float(job["runner_timeout_s"]))
    cost_model = ms.cost_model.CostModel.create(job["cost_model"], num_tuning_cores=cores, tree_method="auto")
    learned = work / COST_MODEL_FILE
    if job["cost_model"] == "xgb" and learned.is_file():
        cost_model.load(str(learned))  # what earlier rounds measured: a round must not start blind
    try:
        ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(work), max_trials_global=trials,
                      num_trials_per_iter=per_iter, builder=builder, runner=runner, database=database,
                      cost_model=cost_model, task_scheduler=job["task_scheduler"])
    finally:
        for pooled in (builder, runner):
            if hasattr(pooled, "pool") and isinstance(pooled.pool, ProcessPool):
                pooled.pool.close()
        if job["cost_model"] == "xgb" and cost_model.booster is not None:
            partial = learned.with_suffix(".partial.tar")
            cost_model.save(str(partial))
            os.replace(partial, learned)


def _abort(_sch: Any) -> None:
    os.abort()


def _latency(mod: Any, weights: list, target: Any, database_dir: Path | None, inputs: dict,
             min_s: float, weight_prepack: bool = False) -> tuple[float, list, float]:
    """Median latency (ms) of the compiled module on the Relax VM, its outputs, and the minimum
    latency (ms; steadier than the median on a shared machine)."""
    import numpy as np
    import tvm

    from chipbench.backends.tvm import build, load
    from chipbench.backends.tvm_runtime import to_numpy

    exe, _ = build(mod, target, database_dir, weight_prepack)
    dev = tvm.cpu()
    _vm, main, params = load(exe, weights, dev)
    args = [tvm.runtime.tensor(v, dev) for v in inputs.values()]  # saved in graph input order
    outputs = to_numpy(main(*args, *params))
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
