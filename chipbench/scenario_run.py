"""One cell's timed run through its scenario: LoadGen (or the fixed-rate issuer) on the host
clock, or the device's own clock where the compiled model offers one.

Cells whose `Compiled` offers a device `timer` (CUDA events, TVM RPC `time_evaluator`) keep
`measure_on_device` for single-stream and offline: the host clock would time the transfer or
the network, and LoadGen only knows the host clock. Their records say `issuer: "device clock"`.
Every other cell and scenario runs through chipbench.loadgen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from chipbench.loadgen import LoadGenRun, arrival_for, null_overhead, run_scenario
from chipbench.recording import timed_run
from chipbench.sample_library import SampleSet, cell_samples, workload_samples

OVERHEAD_SHARE = 0.05  # above this share of the median latency, the bare loop's figure is kept too


@dataclass
class ScenarioResult:
    """What the record takes from a cell's timed run: `samples_s` (per-query seconds),
    `loadgen` (the record's `scenario.loadgen`), `notes`, the energy `meter`, `latency_extra` /
    `throughput` to merge into the record's latency and replace its throughput (Server and
    fixed-rate: the rate served), and `stop_note`: why a device-clock run stopped at
    max_duration_s before its minimums (under LoadGen, its own verdict says so)."""

    samples_s: list[float]
    loadgen: dict[str, Any]
    notes: list[str]
    meter: Any
    stop_note: str | None = None
    latency_extra: dict[str, Any] = field(default_factory=dict)
    throughput: dict[str, Any] | None = None


def sample_set(prep, seed: int) -> SampleSet:
    """The workload's samples (test split, else seeded inputs) where the cell has a workload;
    the cell's own inputs otherwise (a kernel case, a foreign model)."""
    if prep.workload is not None:
        return workload_samples(prep.workload, None, seed)
    return cell_samples(prep.prepared.inputs, prep.batch)


def run_cell_scenario(cell, prep, compiled, device: dict | None) -> ScenarioResult:
    """Time `compiled` as `cell.scenario` says (see the module docstring)."""
    settings = cell.settings
    if compiled.timer is not None and cell.scenario in ("single-stream", "offline"):
        m, meter = timed_run(compiled.run, compiled.timer, prep.prepared.inputs, settings, device,
                             compiled.timer_untimed_calls)
        return ScenarioResult(m.samples_s, {"issuer": "device clock"}, [n for n in (m.note,) if n], meter, m.note)
    from chipbench.energy import meter_for

    meter = meter_for(device)
    samples = sample_set(prep, cell.seed)
    arrival = arrival_for(settings, prep.workload, cell.scenario)
    notes = []
    if compiled.canned:  # fixed outputs by design (harness overhead): checking them would say nothing
        settings = replace(settings, accuracy_log_probability=0.0)
        notes.append("timed responses not checked: the backend returns canned outputs whatever the input")
    with meter:
        lgrun = run_scenario(cell.scenario, _counted(meter, compiled.run), samples, prep.batch, settings, arrival,
                             cell.seed)
    result = ScenarioResult(lgrun.samples_s, lgrun.record(), notes + list(lgrun.notes), meter)
    _served_rate(cell.scenario, lgrun, prep.batch, result)
    _bare_loop(cell, compiled, prep, lgrun, result)
    return result


def _counted(meter, run):
    """`run` with each call counted by the energy meter (as `timed_run` counts queries)."""
    def call(inputs):
        return meter.query(lambda: run(inputs))()

    return call


def _served_rate(scenario: str, lgrun: LoadGenRun, batch: int, result: ScenarioResult) -> None:
    """Server and fixed-rate latencies include queueing, so the rate served is the throughput:
    LoadGen's completed samples per second (Server), queries per wall second (fixed-rate)."""
    if scenario == "server":
        rate = lgrun.details.get("loadgen_summary_stats", {}).get("result_completed_samples_per_sec")
        if rate:
            result.throughput = {"value": float(rate), "unit": "samples/s"}
    elif scenario == "fixed-rate":
        wall = lgrun.details.get("wall_s")
        if wall:
            result.throughput = {"value": len(lgrun.samples_s) * batch / wall, "unit": "samples/s"}
    elif scenario == "offline":
        rate = lgrun.details.get("samples_per_s")
        if rate:
            result.loadgen["samples_per_s"] = rate


def _bare_loop(cell, compiled, prep, lgrun: LoadGenRun, result: ScenarioResult) -> None:
    """Where LoadGen's own per-query cost (null model, this scenario) exceeds OVERHEAD_SHARE of
    the median latency, time the bare loop too and keep its median, labelled."""
    if cell.scenario not in ("single-stream", "multi-stream"):
        return
    overhead = null_overhead(cell.scenario, 2_000, cell.seed)
    overhead_s = overhead["loadgen_us"] * 1e-6
    median = float(np.median(lgrun.samples_s))
    result.loadgen["overhead_us"] = {"loadgen": overhead["loadgen_us"], "bare_loop": overhead["bare_loop_us"]}
    if not math.isfinite(overhead_s) or median <= 0 or overhead_s <= OVERHEAD_SHARE * median:
        return
    short = replace(cell.settings, min_duration_s=min(cell.settings.min_duration_s, 0.5))
    m, _ = timed_run(compiled.run, None, prep.prepared.inputs, short, None)
    result.latency_extra["bare_loop_median_ms"] = float(np.median(m.samples_s)) * 1e3
    result.notes.append(f"LoadGen's own cost ({overhead['loadgen_us']:.3g} µs a query) exceeds "
                        f"{OVERHEAD_SHARE:.0%} of the median latency: latency.bare_loop_median_ms is the bare loop's "
                        "median on the same model")
