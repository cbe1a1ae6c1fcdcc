"""CLI for the LoadGen scenarios: the checks of `chipbench run`'s scenario flags, and
`chipbench loadgen-overhead` (LoadGen's own per-query cost beside the bare loop's)."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def scenario_flags(cells, target_qps: float | None, rate: float | None, find_peak: bool,
                   samples_per_query: int | None) -> None:
    """Each scenario flag must go with a cell of its scenario (--target-qps and --find-peak with
    server, --rate with fixed-rate, --samples-per-query with multi-stream); SuiteError naming the
    flag otherwise, before any cell runs."""
    from chipbench.suite import SuiteError

    scenarios = {c.scenario for c in cells}
    for flag, given, needs in (("--target-qps", target_qps is not None, "server"), ("--find-peak", find_peak, "server"),
                               ("--rate", rate is not None, "fixed-rate"),
                               ("--samples-per-query", samples_per_query is not None, "multi-stream")):
        if given and needs not in scenarios:
            raise SuiteError(f"{flag} goes with the {needs} scenario, and no cell runs it "
                             f"(scenarios: {', '.join(sorted(scenarios))})")


def register(app: typer.Typer) -> None:
    """Add `loadgen-overhead` to `app`."""

    @app.command("loadgen-overhead")
    def loadgen_overhead(
        scenario: Annotated[str, typer.Option("--scenario", help="single-stream, multi-stream, server or offline (comma-separated).")] = "single-stream,multi-stream,server,offline",
        queries: Annotated[int, typer.Option("--queries", min=100, help="Queries per scenario.")] = 20_000,
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    ) -> None:
        """LoadGen's own cost per query (microseconds), measured with a null model through the
        same adapter the cells use, beside the bare timing loop's."""
        from chipbench.cli import _split, fail
        from chipbench.loadgen import LOADGEN_SCENARIOS, null_overhead

        names = _split([scenario])
        for name in names:
            if name not in LOADGEN_SCENARIOS:
                fail(f"--scenario: LoadGen runs {', '.join(LOADGEN_SCENARIOS)}, not '{name}'")
        rows = [null_overhead(name, queries) for name in names]
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        for r in rows:
            typer.echo(f"{r['scenario']:<14} LoadGen {r['loadgen_us']:8.2f} µs/query   bare loop {r['bare_loop_us']:6.2f} µs/query"
                       f"   ({r['queries']} queries)")
