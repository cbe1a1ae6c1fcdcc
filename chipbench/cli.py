"""`chipbench <verb>`: progress on stderr, data in files, one-line errors, non-zero exit on failure."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Benchmark industrial AI workloads across ONNX Runtime, TVM and PyTorch.")
err = Console(stderr=True, highlight=False)

ResultsDir = Annotated[Path, typer.Option("--results-dir", help="Where results and reports go.")]


def fail(message: str, code: int = 2) -> None:
    """One `error:` line (whatever the message holds) and exit `code` (2: bad input)."""
    line = " ".join(message.split())
    err.print(f"[red]error:[/red] {escape(line)}", markup=True, soft_wrap=True)
    raise typer.Exit(code)


def _positive(value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise typer.BadParameter(f"{value:g} is not > 0")
    return value


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def _prompt_lens(text: str | None) -> tuple[int, ...] | None:
    """--prompt-lens 32,64: positive integers, else exit 2 naming the flag."""
    if text is None:
        return None
    try:
        lens = tuple(int(v) for v in _split([text]))
    except ValueError:
        lens = ()
    if not lens or min(lens) < 1:
        fail(f"--prompt-lens must be comma-separated integers >= 1, got {text!r}")
    return lens


@app.command("list")
def list_cmd(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
             tuning: Annotated[bool, typer.Option("--tuning", help="Also say which tuning database tvm-llvm-tuned uses on this CPU, tuned here or transferred (imports TVM).")] = False) -> None:
    """Workloads, backends (with each one's availability and reason) and tuning databases."""
    from chipbench.backends.base import backend_names, compile_capability, get_backend
    from chipbench.device import supported_kinds
    from chipbench.workloads.base import get_workload, workload_names

    workloads = [get_workload(n).describe() for n in workload_names()]
    backends = []
    for name in backend_names():
        b = get_backend(name)
        ok, why = b.available()
        compiles, _ = compile_capability(b)
        backends.append({"name": name, "description": b.description, "available": ok, "reason": why,
                         "precisions": list(b.precisions), "devices": list(supported_kinds(b)),
                         "compiles_here": compiles})
    from chipbench.tuning.listing import database_rows

    host = None
    if tuning:
        from chipbench.tuning import canonical_target

        host = canonical_target()
    databases = database_rows(host)
    if as_json:
        print(json.dumps({"workloads": workloads, "backends": backends, "tuning_databases": databases}, indent=1))
        return
    from rich.table import Table

    out = Console(highlight=False)
    table = Table("workload", "industrial scenario", "task metric", title="Workloads")
    for w in workloads:
        table.add_row(w["name"], w["scenario"], w["task_metric"] or "fidelity only")
    out.print(table)
    table = Table("backend", "available", "devices", "precisions", "description / reason", title="Backends")
    for b in backends:
        available = "yes" if b["available"] else ("[yellow]bundles only[/yellow]" if b["compiles_here"] else "[red]no[/red]")
        table.add_row(escape(b["name"]), available, ",".join(b["devices"]), ",".join(b["precisions"]),
                      escape(b["description"] if b["available"] else b["reason"]))
    out.print(table)
    columns = ["model", "tuned for", "records", "seeded from"] + (["on this CPU"] if tuning else [])
    table = Table(*columns, title="Tuning databases (tvm-llvm-tuned)" + ("" if tuning else "; --tuning: which one this CPU uses"))
    for d in databases:
        table.add_row(*map(escape, [d["model"], d["target"], str(d["records"]), d["seeded_from"] or ""]
                           + ([d["here"] or "not used"] if tuning else [])))
    out.print(table)


@app.command()
def run(
    workload: Annotated[Optional[list[str]], typer.Option("-w", "--workload", help="Workload name(s), comma-separated.")] = None,
    backend: Annotated[Optional[list[str]], typer.Option("-b", "--backend", help="Backend name(s), comma-separated.")] = None,
    suite: Annotated[Optional[Path], typer.Option("--suite", help="A TOML suite file.")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="Your own ONNX model, run on every chosen backend.")] = None,
    inputs: Annotated[Optional[list[str]], typer.Option("--input", help="NAME=SHAPE[:DTYPE] (or NAME:SHAPE[:DTYPE]) for a model input (repeatable).")] = None,
    input_data: Annotated[Optional[Path], typer.Option("--input-data", help="The model's inputs: .npz, .npy, .pb or a test-data folder.")] = None,
    expected: Annotated[Optional[Path], typer.Option("--expected", help="Expected outputs on --input-data (else ONNX Runtime CPU is the reference).")] = None,
    scenario: Annotated[Optional[list[str]], typer.Option("--scenario", help="single-stream, multi-stream, server, offline, fixed-rate, generation (comma-separated).")] = None,
    precision: Annotated[Optional[list[str]], typer.Option("--precision", help="fp32, fp16, bf16, int8.")] = None,
    batch: Annotated[Optional[int], typer.Option("--batch", min=1, help="Offline batch size.")] = None,
    min_duration: Annotated[Optional[float], typer.Option("--min-duration", min=0.0, help="Seconds each cell measures at least.")] = None,
    min_count: Annotated[Optional[int], typer.Option("--min-count", min=1, help="Queries each cell measures at least.")] = None,
    target_qps: Annotated[Optional[float], typer.Option("--target-qps", callback=_positive, help="Server: Poisson arrival rate, queries/s (default: the workload's line rate).")] = None,
    rate: Annotated[Optional[float], typer.Option("--rate", callback=_positive, help="fixed-rate: constant arrival rate, Hz (default: the workload's line rate).")] = None,
    find_peak: Annotated[bool, typer.Option("--find-peak", help="Server: find the highest rate meeting the workload's latency bound (LoadGen's peak search).")] = False,
    samples_per_query: Annotated[Optional[int], typer.Option("--samples-per-query", min=1, help="multi-stream: samples a query (default 8).")] = None,
    prompt_lens: Annotated[Optional[str], typer.Option("--prompt-lens", help="generation: prompt lengths in tokens, e.g. 32,64,128,256.")] = None,
    output_tokens: Annotated[Optional[int], typer.Option("--output-tokens", min=1, help="generation: tokens generated per prompt.")] = None,
    timeout: Annotated[Optional[float], typer.Option("--timeout", callback=_positive, help="Seconds before a cell is killed.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", min=0)] = None,
    task_samples: Annotated[Optional[int], typer.Option("--task-samples", min=0, help="Test samples for the task metric (0: fidelity only).")] = None,
    tuning_db: Annotated[Optional[Path], typer.Option("--tuning-db", help="Where tvm-llvm-tuned looks first for its MetaSchedule database.")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu, cuda[:N] or rpc://HOST:PORT/KEY (default: each backend's own).")] = None,
    target: Annotated[Optional[str], typer.Option("--target", help="Compile for this target (e.g. a TVM target string) instead of the device's own.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Skip cells that already have an ok record with this exact configuration.")] = False,
    results_dir: ResultsDir = Path("results"),
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write the report after the sweep.")] = True,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="Threads each backend runs with (default: every usable core).")] = None,
    pin: Annotated[Optional[str], typer.Option("--pin", help="CPUs each cell runs on, e.g. 0,1 or 0-3 (recorded with the threads).")] = None,
    repeat: Annotated[int, typer.Option("--repeat", min=1, help="Run every cell this many times, each in a fresh process, in rounds; `compare` then sees run-to-run noise (3 or more).")] = 1,
    no_transfer: Annotated[bool, typer.Option("--no-transfer", help="tvm-llvm-tuned: only a database tuned for this exact target, none transferred from another CPU's.")] = False,
    retry_noisy: Annotated[int, typer.Option("--retry-noisy", min=0, help="Measure a NOISY cell (busy machine or slowed CPU) again, up to this many times, after the sweep; every record is kept, the report shows the newest.")] = 0,
) -> None:
    """Run cells (from flags or a suite), store a record per cell, then write the report.

    Every input is checked before the first cell runs; a cell that crashes, hangs or cannot run
    costs that cell only. Stopped with Ctrl-C or SIGTERM, the running cell is killed, what was
    measured is stored, and `--resume` carries on where the sweep stopped."""
    from chipbench.resources import check_run_options
    from chipbench.store import canonical
    from chipbench.suite import SuiteError, check_cell, expand, load_suite, with_overrides

    try:
        check_run_options(pin)
        if suite is not None:
            if scenario or precision:
                fail("--scenario/--precision go with -w/-b; a suite names its own")
            cells = load_suite(suite)
        elif model is not None and backend:
            cells = expand([model.stem], _split(backend), _split(precision) or None, _split(scenario) or None,
                           model=str(model), inputs=tuple(inputs or ()),
                           input_data=str(input_data) if input_data else None,
                           expected=str(expected) if expected else None)
        elif workload and backend:
            cells = expand(_split(workload), _split(backend), _split(precision) or None, _split(scenario) or None)
        else:
            fail("give --suite FILE, --model FILE with -b BACKEND, or both -w WORKLOAD and -b BACKEND")
        if model is None and (inputs or input_data or expected):
            fail("--input, --input-data and --expected go with --model")
        scenario_flags(cells, target_qps, rate, find_peak, samples_per_query)
        cells = with_overrides(cells, batch=batch, min_duration_s=min_duration, min_count=min_count,
                               target_qps=target_qps, rate_hz=rate, find_peak=find_peak or None,
                               samples_per_query=samples_per_query,
                               timeout_s=timeout, seed=seed, task_samples=task_samples,
                               tuning_db=str(tuning_db) if tuning_db else None, device=device, target=target,
                               prompt_lens=_prompt_lens(prompt_lens), output_tokens=output_tokens,
                               threads=threads, pin=pin, no_transfer=no_transfer or None)
        for cell in cells:
            check_cell(cell)
        cells = [cell.with_absolute_paths() for cell in cells]
    except SuiteError as exc:
        fail(str(exc))
    _check_names(cells, f"{suite}: " if suite is not None else "")
    cells = _checked_models(cells)

    store = open_store(results_dir)
    if resume:
        done = store.measured_configs()
        todo = [c for c in cells if canonical(c.to_dict()) not in done]
        err.print(f"resume: {len(cells) - len(todo)} of {len(cells)} cell(s) already measured")
        cells = todo
    if repeat > 1 and retry_noisy:
        fail("--retry-noisy goes with single invocations: with --repeat, `compare` weighs the noise of each")
    records = sweep(cells, store, repeat, retry_noisy)
    if report:
        _write_report(store, results_dir / "report.md", results_dir / "report.html")
    if any(r.status == "failed" for r in records):
        raise typer.Exit(1)


def open_store(results_dir: Path):
    """The results store, checked writable and readable before anything is measured (exit 2
    when it is not), with what an earlier run left unindexed indexed first."""
    from chipbench.store import ResultsStore, StoreError

    store = ResultsStore(results_dir)
    try:
        store.check_writable()
        if store.sync():
            err.print(f"indexed records an earlier run left in {results_dir}/")
    except StoreError as exc:
        fail(str(exc))
    return store


def sweep(cells, store, repeat: int = 1, retry_noisy: int = 0) -> list:
    """Run `cells` into `store` (`repeat` invocations each), a line per finished cell; a record that cannot be stored or a
    signal ends the CLI with one line (exit 1, or 128 + the signal), keeping what finished. Then the
    cells whose newest record is NOISY run again, up to `retry_noisy` times each (the machine, not
    the backend, spoilt them; the earlier records stay). Returns every record made."""
    from chipbench.runner import Interrupted, run_cells
    from chipbench.store import StoreError

    times = f" × {repeat} invocations" if repeat > 1 else ""
    err.print(f"chipbench: {len(cells)} cell(s){times} → {store.root}/")
    from chipbench.progress import sweep_progress

    newest: dict[int, object] = {}  # id(cell) -> its newest record

    def done(cell, rec) -> None:
        newest[id(cell)] = rec
        _progress(cell, rec)
        advance()

    try:
        with sweep_progress(err, len(cells) * repeat) as advance:
            records = run_cells(cells, store, on_done=done, repeat=repeat)
        for _ in range(retry_noisy):
            noisy = [c for c in cells if getattr(newest.get(id(c)), "verdict", None) == "NOISY"]
            if not noisy:
                break
            err.print(f"chipbench: {len(noisy)} NOISY cell(s) measured again (--retry-noisy)")
            with sweep_progress(err, len(noisy)) as advance:
                records += run_cells(noisy, store, on_done=done)
        return records
    except StoreError as exc:
        fail(f"{exc}; the sweep stopped, the record waits in {store.incoming_dir}/ for the next run", code=1)
    except Interrupted as exc:
        fail(f"interrupted by {exc} after {exc.done} of {len(cells) * repeat} cell(s); every finished cell is stored; "
             f"run again with --resume to go on", code=128 + exc.signum)


def _checked_models(cells):
    """Foreign models are checked here, once per distinct (model, inputs, data, batch), so a bad
    file or input fails before any cell runs; each cell then carries the model's sha256."""
    from dataclasses import replace

    from chipbench.byo import ModelError, check_model_cell
    from chipbench.scenarios import batch_for

    checked: dict[tuple, object] = {}
    out = []
    for cell in cells:
        if not cell.model:
            out.append(cell)
            continue
        key = (cell.model, cell.inputs, cell.input_data, cell.expected, cell.batch)
        if key not in checked:
            batches = sorted({batch_for(c.scenario, None, c.settings) for c in cells if c.model == cell.model})
            try:
                checked[key] = check_model_cell(Path(cell.model), list(cell.inputs),
                                                Path(cell.input_data) if cell.input_data else None,
                                                Path(cell.expected) if cell.expected else None, cell.batch, batches)
            except ModelError as exc:
                fail(str(exc))
        found = checked[key]
        if found.precision != "fp32" and cell.precision not in ("fp32", found.precision):
            fail(f"{cell.model}: the graph computes in {found.precision}; --precision {cell.precision} "
                 f"converts fp32 models only")
        out.append(replace(cell, workload_params={**cell.workload_params, "sha256": found.sha256}))
    return out


def _progress(cell, rec) -> None:
    """One line per finished cell on stderr, naming the precision that ran (a foreign fp16 graph
    runs as fp16 whatever the cell asked)."""
    from dataclasses import replace

    if rec.precision and rec.precision != cell.precision:
        cell = replace(cell, precision=rec.precision)
    if rec.status == "ok":
        color = {"VALID": "green", "NOISY": "yellow"}.get(rec.verdict, "red")
        if rec.latency:
            figures = f"p50 {rec.latency.median:.3g} ms, {rec.throughput.value:.4g} {rec.throughput.unit}"
        else:
            figures = f"end to end {rec.profile['e2e_ms']:.3g} ms, {len(rec.profile['ops'])} operators"
        err.print(f"  [{color}]{rec.verdict}[/{color}] {escape(cell.label())}: {figures}", markup=True, soft_wrap=True)
    else:
        color = "red" if rec.status == "failed" else "yellow"
        err.print(f"  [{color}]{rec.status.upper()}[/{color}] {escape(cell.label())}: {escape(rec.reason or '')}",
                  markup=True, soft_wrap=True)


def _check_names(cells, where: str = "") -> None:
    """Every cell names a known workload (or kernel, or model) and backend; `where` prefixes the error."""
    from chipbench.backends.base import backend_names
    from chipbench.workloads.base import workload_names

    known_w, known_b = set(workload_names()), set(backend_names())
    for cell in cells:
        if cell.workload not in known_w and not (cell.model or cell.kernel):
            fail(f"{where}unknown workload '{cell.workload}' (known: {', '.join(sorted(known_w))})")
        if cell.backend not in known_b:
            fail(f"{where}unknown backend '{cell.backend}' (known: {', '.join(sorted(known_b))})")


def _write_report(store, md: Path | None, html: Path | None) -> None:
    """Both reports from the newest record of every cell; a target that cannot be written is a
    one-line error, and the report already there is left whole (atomic writes)."""
    from chipbench.report import write_reports
    from chipbench.store import StoreError

    for path in (md, html):
        if path is not None and path.is_dir():
            fail(f"{path}: is a folder; give a file name for the report")
    try:
        records = store.latest()
    except StoreError as exc:
        fail(str(exc))
    for problem in store.unreadable:
        err.print(f"warning: skipped unreadable {problem}")
    if not records and not (store.root / "conformance").is_dir():
        fail(f"no results in {store.root}/ (run `chipbench run` first)")
    try:
        written = write_reports(records, md, html, store.root)
    except OSError as exc:
        fail(f"{exc.filename or 'report'}: cannot write the report ({exc.strerror or exc}); the previous one is unchanged",
             code=1)
    for path in written:
        err.print(f"wrote {path}")


@app.command()
def report(
    results_dir: ResultsDir = Path("results"),
    html: Annotated[Optional[Path], typer.Option("--html", help="HTML output (default RESULTS_DIR/report.html).")] = None,
    md: Annotated[Optional[Path], typer.Option("--md", help="Markdown output (default RESULTS_DIR/report.md).")] = None,
) -> None:
    """Write the Markdown and HTML reports from the newest record of every cell."""
    from chipbench.store import ResultsStore

    if html is None and md is None:
        html, md = results_dir / "report.html", results_dir / "report.md"
    if results_dir.exists() and not results_dir.is_dir():
        fail(f"{results_dir}: results dir is a file, not a folder")
    _write_report(ResultsStore(results_dir), md, html)


store_app = typer.Typer(no_args_is_help=True, help="Look after the results store.")
app.add_typer(store_app, name="store")


@store_app.command("rebuild")
def store_rebuild(results_dir: ResultsDir = Path("results")) -> None:
    """Rebuild the index from the JSON records (and index records a crash or a full disk left in
    incoming/); an index that cannot be read is moved aside, never deleted."""
    from chipbench.store import ResultsStore, StoreError

    if not results_dir.is_dir():
        fail(f"{results_dir}: no such results dir")
    store = ResultsStore(results_dir)
    try:
        count, moved = store.rebuild()
    except (StoreError, OSError) as exc:
        fail(str(exc))
    if moved:
        err.print(f"the unreadable index was moved to {moved}")
    for problem in store.unreadable:
        err.print(f"warning: skipped unreadable {problem}")
    print(f"{count} record(s) indexed in {store.db_path}")


@app.command()
def probe(
    quick: Annotated[bool, typer.Option("--quick", help="Small GEMM and triad (seconds, less exact).")] = False,
    if_missing: Annotated[bool, typer.Option("--if-missing", help="Keep this machine's saved profile if there is one.")] = False,
    results_dir: ResultsDir = Path("results"),
) -> None:
    """Measure this machine's ceilings (GEMM FLOP/s per precision, STREAM triad bandwidth), and
    each CUDA GPU's (matmul FLOP/s per precision, copy bandwidth) where there is one."""
    from chipbench.gpu_probe import probe_gpus
    from chipbench.probe import load_profile, measure_ceilings, save_profile

    probe_gpus(results_dir, quick=quick, if_missing=if_missing, note=lambda s: err.print(s, markup=False))  # no GPU: nothing
    saved = load_profile(results_dir) if if_missing else None
    if saved is not None:
        if saved.details.get("reference_loop_s") is None:  # measured before the machine-speed rule
            from chipbench.speed import calibrate

            saved.details["reference_loop_s"] = calibrate()
            save_profile(saved, results_dir)
            err.print("device profile already measured for this machine; its CPU speed calibration added")
            return
        err.print("device profile already measured for this machine (drop --if-missing to measure again)")
        return

    err.print("chipbench: measuring device ceilings (all cores)...")
    profile = measure_ceilings(quick=quick)
    path = save_profile(profile, results_dir)
    for precision, gflops in profile.peak_gflops.items():
        theory = profile.theoretical_gflops.get(precision)
        of = f" ({100 * gflops / theory:.0f} % of theoretical {theory:.0f})" if theory else ""
        print(f"peak {precision}: {gflops:.1f} G(FL)OP/s{of}")
    print(f"triad bandwidth: {profile.bandwidth_gbps:.1f} GB/s")
    for precision, why in profile.details.get("skipped", {}).items():
        print(f"{precision}: not measured ({why})")
    err.print(f"wrote {path}")


@app.command()
def kernels(
    kernel: Annotated[Optional[list[str]], typer.Option("-k", "--kernel", help="Kernel case(s) or kernel name(s).")] = None,
    tag: Annotated[Optional[str], typer.Option("--tag", help="Cases with this tag (kernel, workload, deepbench, smoke).")] = None,
    backend: Annotated[Optional[list[str]], typer.Option("-b", "--backend", help="Backend name(s).")] = None,
    list_only: Annotated[bool, typer.Option("--list", help="List the cases and exit.")] = False,
    min_duration: Annotated[float, typer.Option("--min-duration", min=0.0)] = 0.5,
    timeout: Annotated[float, typer.Option("--timeout", callback=_positive)] = 300.0,
    results_dir: ResultsDir = Path("results"),
) -> None:
    """Operator microbenchmarks at workload shapes, through every backend, into the results store."""
    from chipbench.kernels.cases import kernel_cases
    from chipbench.scenarios import MeasureSettings
    from chipbench.suite import Cell

    cases = kernel_cases(tag) if tag else kernel_cases() + kernel_cases("smoke")
    wanted = _split(kernel)
    if wanted:
        cases = [c for c in cases if c.name in wanted or c.kernel in wanted]
    if not cases:
        fail(f"no kernel case matches {', '.join(wanted) or tag}")
    if list_only:
        for c in cases:
            print(f"{c.name:40s} {c.flops / 1e9:10.4f} GFLOP {c.bytes / 1e6:10.3f} MB  AI {c.intensity:7.2f}")
        return
    settings = MeasureSettings(warmup_count=3, warmup_s=0.1, min_count=10, min_duration_s=min_duration)
    cells = [Cell(workload=c.name, kernel=c.name, backend=b, timeout_s=timeout, settings=settings)
             for c in cases for b in (_split(backend) or ["ort-cpu", "tvm-llvm"])]
    _check_names(cells)
    records = sweep(cells, open_store(results_dir))
    if any(r.status == "failed" for r in records):
        raise typer.Exit(1)


@app.command()
def profile(
    workload: Annotated[list[str], typer.Option("-w", "--workload", help="Workload name(s).")],
    backend: Annotated[Optional[list[str]], typer.Option("-b", "--backend", help="Backends with a per-operator profiler (default ort-cpu,tvm-llvm).")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1)] = 1,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Profiled runs (the median is reported).")] = 10,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu, cuda[:N] or rpc://HOST:PORT/KEY.")] = None,
    timeout: Annotated[float, typer.Option("--timeout", callback=_positive, help="Seconds before a cell is killed.")] = 600.0,
    results_dir: ResultsDir = Path("results"),
) -> None:
    """Per-operator time breakdown, each taken in its own cell and stored as a record of kind
    "profile"; printed placed on this machine's roofline (run `chipbench probe` first)."""
    from dataclasses import replace

    from chipbench.opprofile import OpProfileError, attach_roofline, render_markdown
    from chipbench.probe import ceilings_lookup
    from chipbench.profiling import profile_cell, profile_of
    from chipbench.suite import SuiteError, check_cell

    cells = [replace(profile_cell(w, b, batch, runs, device), timeout_s=timeout)
             for w in _split(workload) for b in _split(backend) or ["ort-cpu", "tvm-llvm"]]
    try:
        for cell in cells:
            check_cell(cell)
    except SuiteError as exc:
        fail(str(exc))
    _check_names(cells)
    records = sweep(cells, open_store(results_dir))
    ceilings_of = ceilings_lookup(results_dir)
    for record in records:
        try:
            prof = profile_of(record)
        except OpProfileError:
            continue
        ceilings = ceilings_of(record.provenance.get("device"))
        if ceilings is None:
            err.print(f"no ceilings measured for {record.device_label}: roofline columns stay empty "
                      "(run `chipbench probe` there)")
        else:
            attach_roofline(prof, ceilings, record.precision)
        print(render_markdown(prof))
    if any(r.status == "failed" for r in records):
        raise typer.Exit(1)


@app.command()
def project(
    hw: Annotated[str, typer.Option("--hw", help="Hardware spec TOML (or the name of one in hardware/).")],
    workload: Annotated[str, typer.Option("-w", "--workload")],
    precision: Annotated[str, typer.Option("--precision")] = "fp32",
    batch: Annotated[int, typer.Option("--batch")] = 1,
    calibration: Annotated[str, typer.Option("--calibration", help="Backend measured here to calibrate efficiency (ort-cpu), a factor, or none.")] = "ort-cpu",
    results_dir: ResultsDir = Path("results"),
) -> None:
    """Project a workload onto a (hypothetical) accelerator by roofline, calibrated by this machine."""
    from chipbench.paths import atomic_write_text
    from chipbench.opprofile import OpProfileError
    from chipbench.project import HardwareSpecError, project as do_project, render_markdown
    from chipbench.store import StoreError

    try:
        cal: object = float(calibration)
    except ValueError:
        cal = calibration
    try:
        proj = do_project(workload, hw, precision=precision, batch=batch, calibration=cal, results_dir=results_dir)
    except (HardwareSpecError, ValueError, KeyError, OpProfileError, StoreError) as exc:
        fail(str(exc).strip("'\""))
    text = render_markdown(proj)
    stem = f"{workload}-{Path(hw).stem}-{precision}-b{batch}"
    atomic_write_text(results_dir / "projections" / f"{stem}.json", json.dumps(proj.to_dict(), indent=1, default=str))
    atomic_write_text(results_dir / "projections" / f"{stem}.md", text)
    print(text)


@app.command()
def roofline(
    bench_json: Annotated[Path, typer.Argument(help="pytest-benchmark JSON of `pytest kernels --benchmark-only`.")],
    results_dir: ResultsDir = Path("results"),
) -> None:
    """Place kernel benchmark results on this machine's roofline: a table and a plot per backend."""
    from chipbench.probe import load_profile
    from chipbench.roofline import benchmark_points, plot, table

    try:
        json.loads(bench_json.read_text())
    except (OSError, ValueError) as exc:
        fail(f"{bench_json}: not readable JSON ({exc})")
    profile = load_profile(results_dir)
    if profile is None:
        fail(f"no device profile for this machine in {results_dir}: run `chipbench probe --results-dir {results_dir}`")
    try:
        by_backend = benchmark_points(profile, bench_json)
    except (OSError, ValueError, KeyError) as exc:
        fail(f"{bench_json}: not pytest-benchmark JSON from `pytest kernels --benchmark-only` ({exc})")
    for backend, points in by_backend.items():
        stem = bench_json.with_name(f"{bench_json.stem}-roofline-{backend}")
        stem.with_suffix(".md").write_text(table(points, profile))
        for path in plot(profile, points, stem, title=f"{backend} on {profile.machine.cpu}"):
            print(path)


@app.command()
def tune(
    workload: Annotated[Optional[str], typer.Option("-w", "--workload", help="Workload to tune.")] = None,
    kernel: Annotated[Optional[str], typer.Option("-k", "--kernel", help="Kernel case to tune (KERNEL/LABEL).")] = None,
    trials: Annotated[int, typer.Option("--trials", help="Measured candidates the database should hold.")] = 64,
    rounds: Annotated[int, typer.Option("--rounds", help="Measure latency after each of this many rounds.")] = 1,
    batch: Annotated[int, typer.Option("--batch")] = 1,
    cost_model: Annotated[str, typer.Option("--cost-model", help="auto (xgb when installed), random, xgb, mlp.")] = "auto",
    strategy: Annotated[str, typer.Option("--strategy", help="evolutionary-lite, evolutionary, replay-trace.")] = "evolutionary-lite",
    ship: Annotated[bool, typer.Option("--ship", help="Then copy the database, pruned to the best record per task, into results/tuned/.")] = False,
    no_transfer: Annotated[bool, typer.Option("--no-transfer", help="Start from scratch, not from another CPU's database of the same model (its records re-measured here).")] = False,
    results_dir: ResultsDir = Path("results"),
) -> None:
    """MetaSchedule tuning for this CPU into a persistent, resumable database (used by tvm-llvm-tuned)."""
    from chipbench.tuning import TuningError, ship as ship_database, tune as do_tune

    if (workload is None) == (kernel is None):
        fail("give exactly one of -w WORKLOAD or -k KERNEL")
    try:
        result = do_tune(workload or kernel, trials, results_dir, rounds, kind="workload" if workload else "kernel",
                         batch=batch, cost_model=cost_model, strategy=strategy, seed_transfer=not no_transfer)
    except TuningError as exc:
        fail(str(exc))
    for line in result.summary():
        print(line)
    if ship:
        print(f"shipped: {ship_database(result.folder)}")


_debug = False


@app.callback()
def _options(debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks of internal errors.")] = False) -> None:
    """Benchmark industrial AI workloads across ONNX Runtime, TVM and PyTorch."""
    global _debug
    _debug = debug
    from chipbench.plugins import PluginError, load_plugins

    for group in ("chipbench.backends", "chipbench.workloads"):
        try:
            load_plugins(group)
        except PluginError as exc:
            fail(str(exc))


def main() -> None:
    """Console entry: every error a user can meet ends as one `error:` line and a non-zero exit
    (2 for bad input); tracebacks only with --debug."""
    from chipbench.errors import one_line

    try:
        from typer._click.exceptions import ClickException  # typer vendors click from 0.25 on
    except ImportError:  # pragma: no cover - older typer
        from click.exceptions import ClickException
    try:
        code = app(standalone_mode=False)
    except ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()
            sys.exit(2)
        err.print(f"[red]error:[/red] {escape(exc.format_message().splitlines()[0])}", markup=True, soft_wrap=True)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        err.print("[red]error:[/red] interrupted", markup=True)
        sys.exit(130)
    except Exception as exc:
        if _debug:
            raise
        err.print(f"[red]error:[/red] internal error: {escape(one_line(exc))} (run with --debug for the traceback)",
                  markup=True, soft_wrap=True)
        sys.exit(1)
    sys.exit(code or 0)


from chipbench.cli_remote import register as _register_remote  # noqa: E402  (bundle, import, runtime-kit, rpc)

_register_remote(app)
from chipbench.cli_compare import register as _register_compare  # noqa: E402  (compare)

_register_compare(app)
from chipbench.cli_loadgen import register as _register_loadgen, scenario_flags  # noqa: E402

_register_loadgen(app)
from chipbench.cli_conformance import register as _register_conformance  # noqa: E402  (conformance)

_register_conformance(app)
from chipbench.cli_fit import register as _register_fit  # noqa: E402  (fit)

_register_fit(app)
from chipbench.cli_verify import register as _register_verify  # noqa: E402  (verify, publish)

_register_verify(app)

if __name__ == "__main__":
    main()
