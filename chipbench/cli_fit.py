"""`chipbench fit`: will these stacks run these lines? Requirement files (chipbench.requirement)
judged against measured cells (chipbench.fit), each verdict stored as a kind "fit" record."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    """Add `fit` to the chipbench CLI (called at the bottom of chipbench/cli.py)."""
    app.command()(fit)


def _threads(values: list[str] | None) -> list[int] | None:
    from chipbench.cli import _split, fail

    names = _split(values)
    if not names:
        return None
    try:
        out = [int(v) for v in names]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        fail(f"--threads must be comma-separated integers >= 1, got {','.join(names)!r}")
    return list(dict.fromkeys(out))


def fit(
    requirement: Annotated[list[Path], typer.Option("--requirement", "-r", help="A requirement file (TOML, see requirements/); repeatable.")],
    backend: Annotated[list[str], typer.Option("-b", "--backend", help="Backend name(s), comma-separated.")],
    precision: Annotated[Optional[list[str]], typer.Option("--precision", help="fp32, fp16, bf16, int8 (comma-separated; default fp32).")] = None,
    threads: Annotated[Optional[list[str]], typer.Option("--threads", help="Thread counts to judge, comma-separated (default: each requirement's core budget, else the backend's default).")] = None,
    headroom: Annotated[bool, typer.Option("--headroom", help="Also search the highest Poisson rate meeting each deadline (LoadGen FindPeakPerformance; one more cell per stack).")] = False,
    min_count: Annotated[Optional[int], typer.Option("--min-count", min=1, help="Queries per cell (default: what the percentile needs, 662 for p99); fewer can only give NOT PROVEN or DOES NOT FIT.")] = None,
    rerun: Annotated[bool, typer.Option("--rerun", help="Measure every cell again instead of reusing a matching record from the store.")] = False,
    results_dir: Annotated[Path, typer.Option("--results-dir", help="Where results and reports go.")] = Path("results"),
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write the report afterwards.")] = True,
) -> None:
    """Judge each requirement on each backend × precision × thread count: FITS, DOES NOT FIT
    (naming the requirement that failed and by how much) or NOT PROVEN (too few queries for the
    percentile, or a requirement not measurable here), with the headroom.

    Runs the cells it needs (fixed-rate or Server at the requirement's rate, deadline and
    percentile), reusing a stored ok record of the same cell and arrival with enough queries;
    stores each verdict as a record of kind "fit" and writes the report. Exit 0 whatever the
    verdicts, 1 when a cell failed, 2 for bad input."""
    from chipbench.cli import _check_names, _split, _write_report, err, fail, open_store, sweep
    from chipbench.fit import fit_cell, fit_record, headroom_of, judge, reusable
    from chipbench.requirement import RequirementError, load_requirement
    from chipbench.store import StoreError, canonical
    from chipbench.suite import PRECISIONS, SuiteError, check_cell

    try:
        reqs = [load_requirement(p) for p in requirement]
    except RequirementError as exc:
        fail(str(exc))
    names = [r.name for r in reqs]
    if len(set(names)) < len(names):
        fail(f"--requirement: two files name the same requirement ({', '.join(sorted(n for n in set(names) if names.count(n) > 1))})")
    backends = _split(backend)
    if not backends:
        fail("-b/--backend: give at least one backend")
    precisions = _split(precision) or ["fp32"]
    for p in precisions:
        if p not in PRECISIONS:
            fail(f"--precision: unknown precision '{p}' (known: {', '.join(PRECISIONS)})")
    thread_counts = _threads(threads)

    plan = []  # (requirement, backend, precision, threads, cell or None: over the core budget)
    for req in reqs:
        counts = thread_counts or [req.cores]
        for b in backends:
            for p in precisions:
                for t in counts:
                    over = req.cores is not None and t is not None and t > req.cores
                    plan.append((req, b, p, t, None if over else fit_cell(req, b, p, t, min_count=min_count)))
    cells = [c for *_, c in plan if c is not None]
    peaks = {}
    if headroom:
        for req, b, p, t, c in plan:
            if c is not None:
                peaks[(req.name, b, p, t)] = fit_cell(req, b, p, t, headroom=True, min_count=min_count)
    try:
        for cell in cells + list(peaks.values()):
            check_cell(cell)
    except SuiteError as exc:
        fail(str(exc))
    _check_names(cells, "")

    store = open_store(results_dir)
    try:
        known = [] if rerun else store.records()
    except StoreError as exc:
        fail(str(exc))
    found: dict[str, object] = {}  # canonical cell config -> its record
    todo = []
    for cell in cells + list(peaks.values()):
        key = canonical(cell.to_dict())
        if key in found or any(canonical(c.to_dict()) == key for c in todo):
            continue
        rec = _reusable_peak(cell, known) if cell.settings.find_peak else reusable(cell, known, cell.settings.min_count)
        if rec is not None:
            found[key] = rec
        else:
            todo.append(cell)
    if found:
        err.print(f"fit: reusing {len(found)} measured cell(s) from {store.root}/")
    if todo:
        for rec in sweep(todo, store):
            found[canonical(rec.provenance.get("config"))] = rec

    verdicts = []
    for req, b, p, t, cell in plan:
        rec = found.get(canonical(cell.to_dict())) if cell is not None else None
        samples = None
        if rec is not None and rec.status == "ok" and rec.latency is not None:
            try:
                s = store.samples(rec)
            except StoreError as exc:
                err.print(f"warning: {exc}")
                s = None
            samples = None if s is None else s * 1e3
        peak_cell = peaks.get((req.name, b, p, t))
        peak = headroom_of(found.get(canonical(peak_cell.to_dict()))) if peak_cell is not None else None
        verdict = judge(req, rec, t, samples, backend=b, precision=p, headroom=peak)
        verdicts.append(verdict)
        try:
            store.add(fit_record(verdict, rec))
        except StoreError as exc:
            fail(f"{exc}; the verdicts so far are stored", code=1)
    _print(verdicts)
    if report:
        _write_report(store, results_dir / "report.md", results_dir / "report.html")
    if any(r.status == "failed" for r in found.values()):
        raise typer.Exit(1)


def _reusable_peak(cell, records):
    """A stored ok find-peak server record of the same cell and deadline (its measured rate is
    the peak, so only the deadline and percentile are compared); None otherwise."""
    from chipbench.fit import _close, _what, effective_threads

    want = _what(cell.to_dict())
    for rec in reversed(records):
        if rec.kind != "run" or rec.status != "ok":
            continue
        config = rec.provenance.get("config") or {}
        peak = ((rec.scenario.get("loadgen") or {}).get("find_peak")) or {}
        if _what(config) != want or not peak:
            continue
        if not (_close(peak.get("latency_bound_ms"), cell.settings.latency_bound_ms)
                and _close(peak.get("percentile"), cell.settings.percentile)):
            continue
        if cell.threads is not None and effective_threads(rec) != cell.threads:
            continue
        return rec
    return None


def _print(verdicts) -> None:
    """One line per verdict on stdout: requirement, stack, verdict, margin, headroom."""
    from rich.console import Console
    from rich.markup import escape

    out = Console(highlight=False, soft_wrap=True)
    colour = {"FITS": "green", "DOES NOT FIT": "red", "NOT PROVEN": "yellow"}
    for v in verdicts:
        c = colour[v.verdict]
        out.print(f"{escape(v.requirement.name)} on {escape(v.stack())}: [{c}]{v.verdict}[/{c}] — "
                  f"{escape(v.margin)}; headroom {escape(v.headroom_text())}")
