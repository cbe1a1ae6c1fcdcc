"""`chipbench compare BASE NEW`: per-cell speedups with bootstrap intervals, the suite's geometric
mean, accuracy changes; exit 1 on a significant regression (for CI), 2 on bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

_SIDES = ("a results dir (results-a/ or dir:PATH), commit:PREFIX (records of that git commit) or "
          "machine:HOST (records measured on that hostname); commit: and machine: look in --results-dir")


def register(app: typer.Typer) -> None:
    """Add `compare` to the chipbench CLI (called at the bottom of chipbench/cli.py)."""
    app.command("compare")(compare_cmd)


def _threshold(text: str) -> float:
    """"5", "5%" or "2.5 %" → 0.05, 0.05, 0.025. ValueError outside [0, 100)."""
    value = float(text.strip().rstrip("%").strip())
    if not 0.0 <= value < 100.0:
        raise ValueError(text)
    return value / 100.0


def _writable(path: Path | None, flag: str) -> None:
    from chipbench.cli import fail

    if path is None:
        return
    if path.is_dir():
        fail(f"{flag} {path}: is a folder, not a file")
    if not path.parent.is_dir():
        fail(f"{flag} {path}: folder {path.parent} does not exist")


def compare_cmd(
    base: Annotated[str, typer.Argument(metavar="BASE", help=f"BASE: {_SIDES}.", show_default=False)],
    new: Annotated[str, typer.Argument(metavar="NEW", help="NEW: written like BASE.", show_default=False)],
    results_dir: Annotated[Path, typer.Option("--results-dir", help="The store commit: and machine: select from.")] = Path("results"),
    threshold: Annotated[str, typer.Option("--threshold", help="Smallest change called faster or slower, in percent (5 or 5%).")] = "5",
    md: Annotated[Optional[Path], typer.Option("--md", help="Write the Markdown here (else it goes to stdout).")] = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="Write a self-contained HTML page here.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the comparison as JSON here.")] = None,
    resamples: Annotated[int, typer.Option("--resamples", help="Bootstrap resamples per cell (>= 100).")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap (results are reproducible).")] = 0,
) -> None:
    """Compare two sets of runs cell by cell: speedup = BASE median / NEW median (> 1: NEW is
    faster) with a 95 % bootstrap interval from the raw samples; faster / slower only when the
    whole interval lies beyond --threshold. Exit 1 when a cell regressed (significantly slower,
    or newly failed or INVALID), 0 otherwise, 2 on bad input."""
    from chipbench.cli import fail
    from chipbench.compare import CompareError, Selector, compare, load_side
    from chipbench.compare_report import render, to_json
    from chipbench.paths import atomic_write_text

    try:
        tau = _threshold(threshold)
    except ValueError:
        fail(f"--threshold {threshold!r}: a percentage in [0, 100), e.g. 5 or 5%")
    if resamples < 100:
        fail(f"--resamples {resamples}: at least 100")
    if seed < 0:
        fail(f"--seed {seed}: not negative")
    for path, flag in ((md, "--md"), (html, "--html"), (json_out, "--json")):
        _writable(path, flag)
    try:
        sides = [load_side(Selector.parse(text, role), results_dir, role) for text, role in ((base, "BASE"), (new, "NEW"))]
    except CompareError as exc:
        fail(str(exc))
    result = compare(sides[0], sides[1], threshold=tau, resamples=resamples, seed=seed)
    text = render(result, "md")
    for path, flag, content in ((md, "--md", lambda: text), (html, "--html", lambda: render(result, "html")),
                                (json_out, "--json", lambda: to_json(result))):
        if path is None:
            continue
        try:
            atomic_write_text(path, content())
        except OSError as exc:
            fail(f"{flag} {path}: cannot write ({exc.strerror or exc})", code=2)
    if md is None:
        typer.echo(text)
    if result.regressions:
        from chipbench.cli import err

        err.print(f"{len(result.regressions)} cell(s) regressed", highlight=False)
    raise typer.Exit(result.exit_code)
