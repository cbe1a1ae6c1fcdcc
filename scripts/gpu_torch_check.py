#!/usr/bin/env python3
"""GPU check of the PyTorch CUDA backends: the default CNN and transformer workloads on
`torch-eager-cuda` and `torch-compile-cuda` at batch 1 (single-stream) and batch 32 (offline)
through the normal `chipbench run` path, after `chipbench probe` has measured the GPU.

    python3 scripts/gpu_torch_check.py --results-dir results/gpu --export $OUT
    python3 scripts/gpu_torch_check.py --dry-run                # the plan and the command lines
    python3 scripts/gpu_torch_check.py --device cpu --quick     # the same path on the CPU backends

Phases, each timed: (1) preflight: interpreter, torch, CUDA, the GPU as NVML/torch describe
it, the backends' availability; (2) caches: every workload exported and its FP32 reference
made at each batch, the small models trained at first use (on the CPU, cached under
CHIPBENCH_CACHE), so no cell spends its time limit training; (3) `chipbench probe` (host CPU
and GPU ceilings); (4) `chipbench run` per cell; (5) a summary table, and with --export
a few flat files (records, summary, device profiles, log) for a machine that sends back little.
With --with-tests it also runs the tests marked `gpu` (tests/test_gpu.py) after the probe.

It needs only what chipbench needs at run time (torch, onnx, onnxruntime, numpy, scipy,
jinja2, matplotlib, rich, typer, psutil; nvidia-ml-py for GPU description and energy). Where
chipbench is not installed (a bare GPU image), it runs the checkout in place: a folder of
symbolic links that maps the checkout's top-level folders into the `chipbench` package as
pyproject.toml's package-dir does, put on PYTHONPATH. Exit status: 0 when every cell is ok
and VALID, 1 when one is not (or a step broke), 2 for bad arguments, 3 when every cell that
ran is VALID but the time budget (--budget-s, default 9 minutes for a 10-minute command) left
some unrun: the summary names them. Cells run backend by backend, batch by batch, so a cut
drops whole groups from the end (torch-compile at batch 32 first).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("defect-cnn", "vibration-cnn1d", "edge-inspect", "rul-tcn", "sensor-ae", "sensor-transformer")
BACKENDS = ("torch-eager-cuda", "torch-compile-cuda")
# pyproject.toml [tool.setuptools] package-dir: subpackages that live at the checkout's top level
MAPPED = {"backends": "backends", "workloads": "workloads", "kernels": "kernels"}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def chipbench_env(scratch: Path) -> tuple[dict[str, str], str]:
    """An environment in which `python -m chipbench.cli` imports this checkout, and how."""
    env = {k: v for k, v in os.environ.items() if k != "CHIPBENCH_PLUGINS"}  # no test doubles here
    probe = [sys.executable, "-c", "import os, chipbench.backends.base as b, chipbench.workloads.base; "
             "print(os.path.realpath(b.__file__))"]
    found = subprocess.run(probe, cwd=scratch, env=env, capture_output=True, text=True)
    if found.returncode == 0 and Path(found.stdout.strip()).is_relative_to(ROOT):
        return env, "installed"  # this checkout, installed (editable): nothing to do
    shadow = scratch / "pkg" / "chipbench"
    shadow.mkdir(parents=True, exist_ok=True)
    for entry in (ROOT / "chipbench").iterdir():
        if entry.name != "__pycache__" and not (shadow / entry.name).exists():
            (shadow / entry.name).symlink_to(entry)
    for name, folder in MAPPED.items():
        if not (shadow / name).exists():
            (shadow / name).symlink_to(ROOT / folder)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shadow.parent), env.get("PYTHONPATH")]))
    found = subprocess.run(probe, cwd=scratch, env=env, capture_output=True, text=True)
    if found.returncode != 0 or not Path(found.stdout.strip()).is_relative_to(ROOT):
        err = found.stderr.strip()
        raise SystemExit(f"error: cannot import chipbench from {ROOT}: "
                         f"{err.splitlines()[-1] if err else 'another chipbench comes first: ' + found.stdout.strip()}")
    return env, f"checkout in place ({shadow} -> {ROOT})"


PREFLIGHT = r"""
import json, platform, sys
from chipbench import gpu
from chipbench.backends.base import backend_names, get_backend
out = {"python": sys.version.split()[0], "platform": platform.platform(), "torch_build": gpu.torch_build(),
       "cuda_present": gpu.cuda_present(), "torch_cuda_problem": gpu.torch_cuda_problem()}
try:
    import pynvml
    out["pynvml"] = getattr(pynvml, "__version__", "importable")
except ImportError:
    out["pynvml"] = None
if out["torch_cuda_problem"] is None:
    try:
        out["device"] = gpu.describe(int(sys.argv[1]), use_torch=True)
    except Exception as exc:
        out["device"] = f"{type(exc).__name__}: {exc}"
out["backends"] = {n: list(get_backend(n).available()) for n in sys.argv[2].split(",")}
names = set(backend_names())
out["unknown_backends"] = [n for n in sys.argv[2].split(",") if n not in names]
from chipbench.workloads.base import workload_names
out["unknown_workloads"] = [w for w in sys.argv[3].split(",") if w not in workload_names()]
print(json.dumps(out))
"""

WARM = r"""
import json, sys, time
import torch
from chipbench.prepare import prepare_workload
from chipbench.taskeval import reference_metric
from chipbench.workloads.base import get_workload
name, batches, task_samples, seed = sys.argv[1], [int(b) for b in sys.argv[2].split(",")], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(int(sys.argv[5]))
t0 = time.perf_counter()
w = get_workload(name)
for b in batches:
    prepare_workload(w, b, seed)
    if w.task_metric and task_samples > 0:
        reference_metric(w, b, task_samples)
print(json.dumps({"workload": name, "seconds": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads()}))
"""


def warm_caches(args, env, cwd: Path, logfile) -> None:
    """Export, reference and train every workload before the cells run, `args.jobs` workloads
    at a time with the usable cores shared among them (small models train little faster on
    16 threads than on 4, so parallel workloads finish sooner than one after another)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    jobs = max(1, min(args.jobs or max(1, cores // 4), len(args.workloads)))
    threads = max(1, cores // jobs)
    log(f"== caches: {len(args.workloads)} workload(s), {jobs} at a time, {threads} threads each")
    pending, running = list(args.workloads), []
    while pending or running:
        while pending and len(running) < jobs:
            w = pending.pop(0)
            argv = [sys.executable, "-c", WARM, w, ",".join(map(str, args.batches)), str(args.task_samples),
                    str(args.seed), str(threads)]
            out, err = (open(cwd / f"warm-{w}.{kind}", "w+") for kind in ("out", "err"))  # files: no pipe fills up
            running.append((w, subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err, text=True), out, err))
        time.sleep(0.5)
        for item in [r for r in running if r[1].poll() is not None]:
            running.remove(item)
            w, proc, out, err = item
            texts = []
            for f in (out, err):
                f.seek(0)
                texts.append(f.read())
                f.close()
            logfile.write(texts[0] + texts[1])
            last = [line.strip() for line in texts[1].splitlines() if line.strip() and not set(line.strip()) <= set("^~ ")]
            log(f"== caches: {w}: " + (texts[0].strip() or f"exit {proc.returncode}: {last[-1][:300] if last else '?'}"))


def plan(args) -> list[tuple[str, list[str]]]:
    """The command lines this check runs, in order, as (step, argv): probe, the gpu tests (with
    --with-tests), one `chipbench run` per cell (backend by backend, batch by batch, so a cut
    for time drops the last cells, never half of each), then the report."""
    cli = [sys.executable, "-m", "chipbench.cli"]
    res = str(args.results_dir)
    steps = [("probe", [*cli, "probe", *(["--quick"] if args.quick else []), "--results-dir", res])]
    if args.with_tests:  # -P: the checkout's own folder must not shadow the package on sys.path
        steps.append(("gpu tests", [sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
                                    "-rs", str(ROOT / "tests" / "test_gpu.py")]))
    common = ["--precision", ",".join(args.precisions), "--device", args.device,
              "--min-duration", str(args.min_duration), "--min-count", str(args.min_count),
              "--task-samples", str(args.task_samples), "--seed", str(args.seed), "--results-dir", res, "--no-report"]
    for backend in args.backends:
        for batch in args.batches:
            scenario = ["--scenario", "single-stream"] if batch == 1 else ["--scenario", "offline", "--batch", str(batch)]
            for w in args.workloads:
                steps.append((f"cell {w} {backend} b{batch}",
                              [*cli, "run", "-w", w, "-b", backend, *scenario, *common, "--timeout", str(args.timeout)]))
    steps.append(("report", [*cli, "report", "--results-dir", res]))
    return steps


def run_step(name: str, argv: list[str], env, cwd: Path, logfile) -> tuple[int, float]:
    log(f"== {name}: {shlex.join(argv)}")
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        sys.stderr.write(line)
        logfile.write(line)
    rc = proc.wait()
    seconds = time.perf_counter() - t0
    log(f"== {name}: exit {rc} after {seconds:.1f} s")
    logfile.write(f"== {name}: exit {rc} after {seconds:.1f} s\n")
    return rc, seconds


def summarize(results_dir: Path, backends: list[str], since: str | None = None) -> tuple[list[dict], str]:
    """This check's records (its backends, newest per cell, made at or after `since`, an ISO
    time in UTC, when given) and a Markdown table of them."""
    latest: dict[tuple, dict] = {}
    for path in sorted((results_dir / "runs").glob("*.json")):
        rec = json.loads(path.read_text())
        if rec["backend"]["name"] not in backends or (since and rec["created"] < since):
            continue
        key = (rec["workload"]["name"], rec["backend"]["name"], rec["precision"], rec["scenario"]["name"], rec["batch"])
        if key not in latest or rec["created"] >= latest[key]["created"]:
            latest[key] = rec
    records = [latest[k] for k in sorted(latest)]
    lines = ["| workload | backend | precision | batch | status | verdict | p50 ms | samples/s | W | J/inference | note |",
             "|---|---|---|---:|---|---|---:|---:|---:|---:|---|"]
    for r in records:
        lat, thr, energy = r.get("latency"), r.get("throughput"), r.get("energy")
        p50 = f"{lat['median']:.3f}" if lat else "–"
        rate = f"{thr['value']:.1f}" if thr else "–"
        watts = f"{energy['avg_watts']:.0f}" if energy else "–"
        jpi = f"{energy['joules_per_inference']:.4g}" if energy else "–"
        note = (r.get("reason") or "")[:90].replace("|", "/")
        lines.append(f"| {r['workload']['name']} | {r['backend']['name']} | {r['precision']} | {r['batch']} | "
                     f"{r['status']} | {r.get('verdict') or '–'} | {p50} | {rate} | {watts} | {jpi} | {note} |")
    return records, "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results-dir", type=Path, default=ROOT / "results" / "gpu-torch")
    p.add_argument("--export", type=Path, help="also write records, summary, profiles and log here (flat)")
    p.add_argument("--device", default="cuda:0", help="cuda[:N], or cpu to rehearse on the CPU backends")
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--backends", help=f"default {','.join(BACKENDS)} (their CPU twins with --device cpu)")
    p.add_argument("--precisions", default="fp32")
    p.add_argument("--batches", default="1,32", help="1 runs single-stream, others offline at that batch")
    p.add_argument("--min-duration", type=float, default=0.5)
    p.add_argument("--min-count", type=int, default=20)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per cell (at most what the budget leaves)")
    p.add_argument("--budget-s", type=float, default=540.0,
                   help="wall seconds for the whole check: no cell starts with less than --min-cell-s left")
    p.add_argument("--min-cell-s", type=float, default=40.0)
    p.add_argument("--task-samples", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=0, help="workloads prepared at a time (default: usable cores / 4)")
    p.add_argument("--quick", action="store_true", help="quick probe")
    p.add_argument("--skip-probe", action="store_true")
    p.add_argument("--with-tests", action="store_true", help="also run the tests marked gpu (tests/test_gpu.py)")
    p.add_argument("--dry-run", action="store_true", help="preflight and the command lines only")
    args = p.parse_args(argv)
    split = lambda s: [v.strip() for v in s.split(",") if v.strip()]  # noqa: E731
    args.workloads, args.precisions = split(args.workloads), split(args.precisions)
    try:
        args.batches = [int(b) for b in split(args.batches)]
    except ValueError:
        p.error(f"--batches {args.batches!r}: expected integers, e.g. 1,32")
    if 0 < args.task_samples < max(args.batches, default=1):
        p.error(f"--task-samples {args.task_samples}: the task metric needs at least one batch ({max(args.batches)}), or 0")
    if not args.device.startswith(("cuda", "cpu")):
        p.error(f"--device {args.device!r}: expected cuda[:N] or cpu")
    default = BACKENDS if args.device.startswith("cuda") else tuple(b.removesuffix("-cuda") for b in BACKENDS)
    args.backends = split(args.backends) if args.backends else list(default)
    args.results_dir = args.results_dir.resolve()
    args.export = args.export.resolve() if args.export else None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    since = datetime.now(timezone.utc).isoformat(timespec="microseconds")  # this run's records only
    args.results_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="chipbench-gpu-check-"))  # neutral cwd: the checkout never shadows the package
    env, how = chipbench_env(scratch)
    index = int(args.device.partition(":")[2] or 0) if args.device.startswith("cuda") else 0
    log(f"chipbench: {how}; python {sys.executable}")
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    pre = subprocess.run([sys.executable, "-c", PREFLIGHT, str(index), ",".join(args.backends), ",".join(args.workloads)],
                         cwd=scratch, env=env, capture_output=True, text=True)
    if pre.returncode != 0:
        log(pre.stderr)
        return 1
    info = json.loads(pre.stdout)
    timings["preflight"] = time.perf_counter() - t0
    log(json.dumps(info, indent=1))
    if info["unknown_backends"] or info["unknown_workloads"]:
        log(f"error: unknown backend(s) {info['unknown_backends']} / workload(s) {info['unknown_workloads']}")
        return 2
    steps = plan(args)
    if args.dry_run:
        for name, argv_ in steps:
            print(f"{name}: {shlex.join(argv_)}")
        unavailable = {n: why for n, (ok, why) in info["backends"].items() if not ok}
        print(f"backends unavailable here (their cells would be skipped): {unavailable or 'none'}")
        return 0

    logpath = args.results_dir / "gpu-check.log"
    with open(logpath, "a") as logfile:
        logfile.write(json.dumps({"preflight": info}) + "\n")
        t0 = time.perf_counter()
        warm_caches(args, env, scratch, logfile)  # trained weights before any cell's time limit starts
        timings["caches"] = time.perf_counter() - t0
        failed_steps, not_run = [], []
        timings["cells"] = 0.0
        for name, argv_ in steps:
            if name == "probe" and args.skip_probe:
                continue
            left = args.budget_s - (time.perf_counter() - started)
            if name.startswith("cell "):
                if left < args.min_cell_s:  # not enough time for another cell: say so, never half-run it
                    not_run.append(name.removeprefix("cell "))
                    continue
                argv_ = [*argv_[:-1], f"{min(args.timeout, left - 5):.0f}"]  # the cell's --timeout fits the budget
            rc, seconds = run_step(name, argv_, env, ROOT if name == "gpu tests" else scratch, logfile)
            if name.startswith("cell "):
                timings["cells"] += seconds
            else:
                timings[name] = seconds
            if name == "gpu tests" and rc != 0:
                failed_steps.append(f"{name} (exit {rc})")
            elif rc not in (0, 1):  # 1: the cell failed, and its record says why; else the step broke
                failed_steps.append(f"{name} (exit {rc})")
    records, table = summarize(args.results_dir, args.backends, since)
    timings["total"] = time.perf_counter() - started
    bad = [r for r in records if r["status"] != "ok" or r.get("verdict") != "VALID"]
    cut = f"; not run within --budget-s {args.budget_s:g}: {', '.join(not_run)}" if not_run else ""
    summary = (f"# GPU check: PyTorch backends on {args.device}\n\n"
               f"{len(records)} cells, {len(records) - len(bad)} ok and VALID{cut}; "
               + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + "\n\n" + table)
    print(summary)
    if args.export:
        args.export.mkdir(parents=True, exist_ok=True)
        (args.export / "gpu-torch-summary.md").write_text(summary)
        (args.export / "gpu-torch-records.json").write_text(json.dumps(
            {"preflight": info, "timings_s": timings, "backends": args.backends, "not_run": not_run,
             "records": records}, indent=1, default=str))
        profiles = {p.name: json.loads(p.read_text()) for p in (args.results_dir / "device").glob("*.json")}
        (args.export / "gpu-torch-profiles.json").write_text(json.dumps(profiles, indent=1))
        (args.export / "gpu-torch.log").write_text(logpath.read_text()[-4_000_000:])
    if failed_steps:
        log(f"steps that broke: {', '.join(failed_steps)}")
    if bad or failed_steps or not records:
        return 1
    return 3 if not_run else 0


if __name__ == "__main__":
    sys.exit(main())
