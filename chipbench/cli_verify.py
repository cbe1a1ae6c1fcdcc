"""`chipbench verify` and `chipbench publish`: re-derive a results dir's figures, and package
them for a reviewer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the chipbench CLI (called at the bottom of chipbench/cli.py)."""
    app.command()(verify)
    app.command()(publish)


def _verification(results: Path, report: Path | None):
    from chipbench.cli import fail
    from chipbench.store import StoreError
    from chipbench.verify import VerifyInputError, verify_results

    try:
        return verify_results(results, report)
    except VerifyInputError as exc:
        fail(str(exc))
    except StoreError as exc:
        fail(str(exc))


def verify(
    results: Annotated[Path, typer.Argument(help="The results dir (runs/, chipbench.sqlite, bundles).")],
    report: Annotated[Optional[Path], typer.Option("--report", help="A Markdown report to check figure by figure against the store.")] = None,
) -> None:
    """Re-derive every record's statistics from its raw samples, its throughput, verdict and
    config hash, check it against the index and the schema, every bundle file against its
    manifest, and (--report) every figure of a Markdown report. Prints one line per mismatch
    (file: field: stored, derived); exit 1 when there is any, 0 when all agree."""
    result = _verification(results, report)
    for line in result.lines():
        print(line)
    raise typer.Exit(0 if result.ok else 1)


def publish(
    results: Annotated[Path, typer.Argument(help="The results dir to publish.")],
    out: Annotated[Path, typer.Option("--out", help="New (or empty) folder for the package.")],
    force: Annotated[bool, typer.Option("--force", help="Publish even when verify finds mismatches (verify.log lists them).")] = False,
) -> None:
    """Write the publication package: report.md and report.html, results.csv (one row per
    metric of every record the report shows), system.json, records/<id>.json (every record)
    and verify.log. Refused (exit 1) when verify finds a mismatch, unless --force."""
    from chipbench.cli import err, fail
    from chipbench.paths import atomic_write_text
    from chipbench.publish import publish as write_package
    from chipbench.store import ResultsStore, StoreError

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        fail(f"--out {out}: exists and is not an empty folder; give a new one")
    checked = _verification(results, None)
    if not checked.ok and not force:
        for line in checked.lines():
            print(line)
        fail(f"{results}: verify found {len(checked.mismatches)} mismatch(es) (listed above); nothing was "
             f"published (--force publishes anyway, with them in verify.log)", code=1)
    try:
        written = write_package(ResultsStore(results), out)
    except (StoreError, ValueError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.filename or out}: cannot write the package ({exc.strerror or exc})", code=1)
    final = _verification(results, out / "report.md")
    log = out / "verify.log"
    atomic_write_text(log, "\n".join(final.lines()) + "\n")
    for path in [*written, log]:
        err.print(f"wrote {path}")
    if not final.ok:
        err.print(f"warning: verify found {len(final.mismatches)} mismatch(es), listed in {log}"
                  + ("" if force else "; the package is not verified"))
        if not force:
            raise typer.Exit(1)
