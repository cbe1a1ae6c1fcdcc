"""`chipbench conformance`: ONNX's own backend tests on every chosen ONNX backend."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Optional

import typer

DEFAULT_BACKENDS = "ort-cpu,tvm-llvm"


def register(app: typer.Typer) -> None:
    """Add `conformance` to the chipbench CLI (called at the bottom of chipbench/cli.py)."""
    app.command()(conformance)


def conformance(
    backend: Annotated[Optional[list[str]], typer.Option("-b", "--backend", help=f"ONNX backends, comma-separated (default {DEFAULT_BACKENDS}).")] = None,
    ops: Annotated[Optional[list[str]], typer.Option("--ops", help="Only the cases of these ONNX operators, comma-separated (e.g. Conv,Resize).")] = None,
    workload: Annotated[Optional[list[str]], typer.Option("-w", "--workload", help="Only the cases of the operators in these workloads' ONNX graphs (with --ops: both).")] = None,
    suite: Annotated[str, typer.Option("--suite", help="node (ONNX's operator tests), converted (its model tests with data) or all.")] = "node",
    results_dir: Annotated[Path, typer.Option("--results-dir", help="Where the conformance document is stored.")] = Path("results"),
    as_json: Annotated[bool, typer.Option("--json", help="Print this run's results and scoreboard as JSON on stdout.")] = False,
    timeout_s: Annotated[float, typer.Option("--timeout-s", min=0.1, help="Seconds one case may take on one backend (compile, run, bisection) before its worker is killed.")] = 120.0,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Only the first N selected cases.")] = None,
    sample: Annotated[Optional[int], typer.Option("--sample", min=1, help="A seeded random sample of N selected cases.")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of --sample.")] = 0,
    jobs: Annotated[Optional[int], typer.Option("--jobs", min=1, help="Workers per backend (default: the usable cores), each running cases in sequence with one thread.")] = None,
) -> None:
    """Run ONNX's backend test cases (generated from the installed onnx, cached per version) on
    each backend for correctness only, with each case's own rtol/atol, and store the results
    (kind `conformance`). Each result is PASS, WRONG (max error given), UNSUPPORTED (import or
    compile refused), CRASHED, TIMED OUT or SKIPPED (values the harness cannot feed), with the
    ONNX node at fault. `chipbench report` shows the scoreboard."""
    from chipbench.backends.base import backend_names, get_backend
    from chipbench.cli import _split, err, fail
    from chipbench.conformance import document, scoreboard
    from chipbench.conformance.cases import CaseError, load_cases, select
    from chipbench.conformance.session import run_cases
    from chipbench.plugins import PluginError
    from chipbench.store import ResultsStore, StoreError

    names = _split(backend) or DEFAULT_BACKENDS.split(",")
    try:
        known = backend_names()
    except PluginError as exc:
        fail(str(exc))
    for name in names:
        if name not in known:
            fail(f"-b {name}: unknown backend (known: {', '.join(known)})")
        if not getattr(get_backend(name), "runs_onnx", True):
            fail(f"-b {name}: runs the torch model, not ONNX; conformance needs an ONNX backend")
    if suite not in ("node", "converted", "all"):
        fail(f"--suite '{suite}': expected node, converted or all")
    if results_dir.exists() and not results_dir.is_dir():
        fail(f"{results_dir}: results dir is a file, not a folder")
    try:
        ResultsStore(results_dir).check_writable()
    except StoreError as exc:
        fail(str(exc))
    wanted = _split(ops)
    try:
        every = load_cases(suite)
        select(every, wanted)  # an operator named by hand must be one ONNX tests
    except CaseError as exc:
        fail(str(exc))
    if workload:
        wanted += [op for op in workload_ops(_split(workload)) if op not in wanted]
    cases = select(every, wanted, limit=limit, sample=sample, seed=seed, ignore_unknown=True)
    runnable = []
    for name in dict.fromkeys(names):
        ok, why = get_backend(name).available()
        if ok:
            runnable.append(name)
        else:
            err.print(f"skipped {name}: unavailable ({why})")
    if not runnable:
        fail("no chosen backend is available here", code=1)
    if not cases:
        fail("no case selected", code=1)
    err.print(f"conformance: {len(cases)} {suite} case(s) on {', '.join(runnable)}")
    done: dict[str, int] = {}

    def progress(result: dict) -> None:
        b = result["backend"]
        done[b] = done.get(b, 0) + 1
        if result["outcome"] == "TIMED OUT" or (result["detail"] or "").startswith("worker "):
            err.print(f"  {b} {result['case']}: {result['outcome']} ({result['detail']})", markup=False)
        if done[b] % 50 == 0 or done[b] == len(cases):
            err.print(f"  {b}: {done[b]}/{len(cases)}")

    from chipbench.machine import usable_cores

    results, info = run_cases(cases, runnable, timeout_s, progress, jobs or usable_cores())
    selection = {"ops": wanted, "workloads": _split(workload), "limit": limit, "sample": sample, "seed": seed, "jobs": jobs}
    doc = document.make_document(cases, results, info, suite, selection)
    path = document.store(results_dir, doc)
    board = scoreboard.build([doc])
    for b in runnable:
        rate = board.overall.get(cases[0].suite, {}).get(b) if suite != "all" else None
        counts = ", ".join(f"{n} {o}" for o, n in sorted(
            sum((r.outcomes for r in (s.get(b) for s in board.overall.values()) if r), Counter()).items()))
        cost = info.get(b, {})
        err.print(f"{b}: {rate.text() + ' pass; ' if rate else ''}{counts} "
                  f"({cost.get('seconds')} s, {cost.get('per_case_s')} s a case)")
    err.print(f"stored {path}")
    if as_json:
        json.dump({"document": doc, "scoreboard": board.to_dict()}, sys.stdout, indent=1, allow_nan=False)
        sys.stdout.write("\n")


def workload_ops(names: list[str]) -> list[str]:
    """The ONNX operators of these workloads' graphs (exported at batch 1, cached as `chipbench
    run` caches them); exits 2 naming an unknown workload."""
    from chipbench.cli import fail
    from chipbench.prepare import export_onnx
    from chipbench.workloads.base import get_workload, workload_names

    known = workload_names()
    ops: list[str] = []
    for name in names:
        if name not in known:
            fail(f"-w {name}: unknown workload (known: {', '.join(known)})")
    for name in names:
        from chipbench.cell import onnx_ops

        for op in onnx_ops(export_onnx(get_workload(name), 1)):
            if op not in ops:
                ops.append(op)
    return ops
