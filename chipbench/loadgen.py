"""Drive MLPerf LoadGen (`mlperf_loadgen`, PyPI `mlcommons-loadgen`) over a compiled model.

- The query sample library is a `chipbench.sample_library.SampleSet`: LoadGen picks the sample
  indices, so queries rotate through the samples and caching one input cannot win.
- The system under test (`Adapter`) answers LoadGen's queries with `Compiled.run`: it groups the
  issued samples into the compiled batch (a last partial batch is padded by repeating samples,
  and counted), completes them with `QuerySamplesComplete`, and keeps a seeded share of the
  responses (`accuracy_log_probability`) to check, after the run, against the backend's own
  answers to the same samples asked untimed: a backend that answers differently while it is
  timed (fast only when nobody looks) is INVALID (MLPerf's TEST01). The
  responses are kept by the adapter rather than hex-logged by LoadGen, because a response can be
  megabytes (a segmentation map) and LoadGen's accuracy log copies and hex-encodes each one.
- Per-query latencies are LoadGen's own: each sample's `complete_ns` (scheduled time to
  completion) from its trace (`mlperf_log_trace.json`); a query's latency is its last sample's.
  Offline issues one query of all samples, so there the samples are the compiled batches' run
  times, and LoadGen's samples per second is kept beside them.
- LoadGen's verdict (VALID/INVALID and its reasons: minimum duration, minimum queries, early
  stopping, latency bound), the settings it used and its summary text come from its logs, which
  go to a temporary folder (inside the cell's private folder when run as a cell) and are removed.

LoadGen's API (TestSettings, ConstructSUT/QSL, StartTestWithLogSettings, the detail log's keys)
is described in mlcommons/inference `loadgen/` (README, test_settings.h, results.cc).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chipbench.accuracy import Tolerance, check, fidelity
from chipbench.backends.base import Arrays
from chipbench.sample_library import SampleSet
from chipbench.scenarios import DEFAULT_SAMPLES_PER_QUERY, MeasureSettings
from chipbench.workloads.base import DEFAULT_ARRIVAL, Arrival

DEFAULT_ACCURACY_LOG_PROBABILITY = 0.05  # share of timed responses checked (TEST01)
MAX_KEPT_RESPONSES = 256  # responses kept for the check at most (memory bound)
# A timed response against the same backend's untimed answer: equal up to the summation order a
# thread pool or a padded batch may change (MLPerf TEST01 asks for the same results).
TEST01_TOLERANCE = Tolerance(max_abs=math.inf, rel_l2=1e-3, min_cosine=0.9999)
LOADGEN_SCENARIOS = {"single-stream": "SingleStream", "multi-stream": "MultiStream", "server": "Server",
                     "offline": "Offline"}
# MLPerf's default target percentiles: SingleStream p90, MultiStream p99 (loadgen/test_settings.h)
DEFAULT_PERCENTILE = {"single-stream": 90.0, "multi-stream": 99.0}


class LoadGenUnavailable(RuntimeError):
    """The `mlperf_loadgen` module cannot be imported (install mlcommons-loadgen)."""


def loadgen_module():
    """The imported `mlperf_loadgen`; LoadGenUnavailable with the install hint when missing."""
    try:
        import mlperf_loadgen
    except ImportError as exc:
        raise LoadGenUnavailable(f"mlperf_loadgen not importable ({exc}); pip install mlcommons-loadgen") from None
    return mlperf_loadgen


def loadgen_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlcommons-loadgen")
    except PackageNotFoundError:
        return None


def arrival_for(settings: MeasureSettings, workload, scenario: str) -> Arrival:
    """The cell's arrival settings: each one the cell sets, else the workload's `arrival`, else
    DEFAULT_ARRIVAL (a kernel or a foreign model). The result's `why` says where they came
    from: "cell settings", "workload" or "cell settings + workload"."""
    base = getattr(workload, "arrival", None) or DEFAULT_ARRIVAL
    rate = settings.rate_hz if scenario == "fixed-rate" else settings.target_qps
    given = [x for x in (rate, settings.latency_bound_ms, settings.percentile) if x is not None]
    origin = "cell settings" if len(given) == 3 else ("workload" if not given else "cell settings + workload")
    percentile = settings.percentile if settings.percentile is not None else (
        base.percentile if scenario in ("server", "fixed-rate") else DEFAULT_PERCENTILE.get(scenario, 90.0))
    return Arrival(rate if rate is not None else base.rate_hz,
                   settings.latency_bound_ms if settings.latency_bound_ms is not None else base.latency_bound_ms,
                   percentile, origin)


class Adapter:
    """LoadGen's system under test over `run` (a `Compiled.run`: arrays in, host arrays out) at
    a fixed compiled `batch`. `issue(query_samples)` runs the issued samples in groups of
    `batch // samples.unit` items (padding a short last group by repeating its last item),
    completes them, and keeps each response's outputs with probability `keep_probability`
    (seeded by `seed`, at most MAX_KEPT_RESPONSES). `run_s` holds each run's seconds."""

    def __init__(self, run: Callable[[Arrays], Arrays], samples: SampleSet, batch: int,
                 keep_probability: float = 0.0, seed: int = 0, complete: Callable[[list], None] | None = None) -> None:
        if batch % samples.unit:
            raise ValueError(f"compiled batch {batch} is not a multiple of the sample unit {samples.unit}")
        self.run, self.samples, self.batch = run, samples, batch
        self.per_run = batch // samples.unit
        self.keep_probability = keep_probability
        self.rng = np.random.default_rng([seed, 0x7E57])
        self.kept: list[tuple[int, Arrays]] = []
        self.responses = 0
        self.padded_runs = 0
        self.padded_samples = 0
        self.run_s: list[float] = []
        self._complete = complete

    def inputs_for(self, indices: list[int]) -> Arrays:
        """The compiled batch's inputs for these sample indices (padded by repeating the last)."""
        if len(indices) < self.per_run:
            self.padded_runs += 1
            self.padded_samples += self.per_run - len(indices)
            indices = indices + [indices[-1]] * (self.per_run - len(indices))
        if self.per_run == 1:
            return self.samples.items[indices[0]]
        items = [self.samples.items[i] for i in indices]
        return {k: np.concatenate([it[k] for it in items]) for k in items[0]}

    def answer(self, indices: list[int]) -> None:
        """Run these sample indices (at most `per_run`) and keep a seeded share of the outputs."""
        inputs = self.inputs_for(indices)
        t0 = time.perf_counter()
        outputs = self.run(inputs)
        self.run_s.append(time.perf_counter() - t0)
        for j, index in enumerate(indices):
            self.responses += 1
            if self.keep_probability and len(self.kept) < MAX_KEPT_RESPONSES and self.rng.random() < self.keep_probability:
                if self.per_run == 1:
                    kept = {k: np.array(v, copy=True) for k, v in outputs.items()}
                else:
                    u = self.samples.unit
                    kept = {k: np.array(np.asarray(v)[j * u:(j + 1) * u], copy=True) for k, v in outputs.items()}
                self.kept.append((index, kept))

    def issue(self, query_samples) -> None:
        """LoadGen's IssueQuery callback: answer in compiled batches, then complete them."""
        lg = loadgen_module()
        for start in range(0, len(query_samples), self.per_run):
            chunk = query_samples[start:start + self.per_run]
            self.answer([q.index for q in chunk])
            responses = [lg.QuerySampleResponse(q.id, 0, 0) for q in chunk]
            (self._complete or lg.QuerySamplesComplete)(responses)

    def flush(self) -> None:
        """LoadGen's FlushQueries callback (nothing is held back)."""

    def check_kept(self) -> dict[str, Any]:
        """MLPerf TEST01: each kept response from the timed run against the same backend's
        answer for the same sample, asked again untimed after the run (`run`, nobody timing
        it), within TEST01_TOLERANCE; a backend that answers differently while it is timed is
        caught. (Against the FP32 reference a sample may legitimately miss the cell's gate, e.g.
        at int8: the cell's accuracy rules judge that, untimed.) Returns {"sampled", "checked",
        "failed", "failures": [str, ...] (at most 5 named), "against", "tolerance", ...}."""
        failures = []
        failed = 0
        for index, outputs in self.kept:
            again = self.run(self.inputs_for([index]))
            u = self.samples.unit
            again = {k: np.asarray(v)[:u] if self.per_run > 1 else v for k, v in again.items()}
            problems = check(fidelity(outputs, again), TEST01_TOLERANCE)
            if problems:
                failed += 1
                if len(failures) < 5:
                    failures.append(f"sample {index}: {'; '.join(problems)}")
        return {"sampled": len(self.kept), "checked": len(self.kept), "failed": failed, "failures": failures,
                "against": "the backend's own untimed answer for the same sample (MLPerf TEST01)",
                "tolerance": {"rel_l2": TEST01_TOLERANCE.rel_l2, "min_cosine": TEST01_TOLERANCE.min_cosine}, "probability": self.keep_probability,
                "responses": self.responses, "by": "chipbench (seeded)"}


@dataclass
class LoadGenRun:
    """One scenario's result. `samples_s`: per-query latencies in seconds (LoadGen's, from
    scheduled time to completion; offline: each compiled batch's run time). `record()` is the
    record's `scenario.loadgen` part (see the shared record contract); `notes` go into the
    record's notes; `accuracy_failure` is the TEST01 reason or None."""

    samples_s: list[float]
    settings: dict[str, Any]
    result: str
    reasons: list[str]
    summary: str
    accuracy_log: dict[str, Any]
    issuer: str = "loadgen"
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def accuracy_failure(self) -> str | None:
        log = self.accuracy_log
        if log.get("failed"):
            return f"{log['failed']} of {log['checked']} sampled responses outside tolerance during the timed run"
        return None

    def record(self) -> dict[str, Any]:
        return {"settings": self.settings, "result": self.result, "reasons": self.reasons, "issuer": self.issuer,
                "summary": self.summary, "accuracy_log": self.accuracy_log, "version": loadgen_version(),
                **self.details}


def parse_detail(text: str) -> dict[str, Any]:
    """The `:::MLLOG` entries of mlperf_log_detail.txt as {key: value} (the last of each key),
    with every `generic_message` under "generic_message" and every error under "errors"."""
    out: dict[str, Any] = {"generic_message": [], "errors": []}
    for line in text.splitlines():
        if not line.startswith(":::MLLOG"):
            continue
        try:
            entry = json.loads(line[len(":::MLLOG"):])
        except json.JSONDecodeError:
            continue
        key, value = entry.get("key"), entry.get("value")
        if key == "generic_message":
            out["generic_message"].append(value)
        elif (entry.get("metadata") or {}).get("is_error"):
            out["errors"].append(f"{key}: {value}")
            out[key] = value
        else:
            out[key] = value
    return out


def verdict_of(detail: dict[str, Any]) -> tuple[str, list[str]]:
    """LoadGen's VALID/INVALID and its reasons, one per unmet rule (results.cc)."""
    reasons = []
    if detail.get("result_min_duration_met") is False:
        reasons.append(f"min duration not met ({detail.get('effective_min_duration_ms')} ms)")
    if detail.get("result_min_queries_met") is False:
        reasons.append(f"min queries not met ({detail.get('effective_min_query_count')})")
    if detail.get("early_stopping_met") is False:
        text = " ".join(str(detail.get("early_stopping_result", "")).replace("*", " ").split())
        reasons.append(f"early stopping not met: {text}" if text else "early stopping not met")
    if detail.get("result_perf_constraints_met") is False:
        reasons.append("latency bound not met at the target percentile")
    if detail.get("result_invalid_reason"):
        reasons.append(" ".join(str(detail["result_invalid_reason"]).split()))
    reasons += [" ".join(e.split()) for e in detail.get("errors", [])]
    result = detail.get("result_validity") or ("INVALID" if reasons else "VALID")
    return ("INVALID" if result != "VALID" else "VALID"), list(dict.fromkeys(reasons))


_SAMPLE_EVENT = re.compile(rb'"query_seq":(\d+),"sample_idx":\d+,"issue_start_ns":\d+,"complete_ns":(\d+)')


def trace_latencies(path: Path) -> list[float]:
    """Per-query latencies (seconds) from LoadGen's trace: each Sample event's `complete_ns`
    (from the query's scheduled time), a query's latency being its slowest sample's, in query
    order."""
    per_query: dict[int, int] = {}
    with open(path, "rb") as f:
        for line in f:
            m = _SAMPLE_EVENT.search(line)
            if m:
                q, ns = int(m.group(1)), int(m.group(2))
                if ns > per_query.get(q, -1):
                    per_query[q] = ns
    return [per_query[q] * 1e-9 for q in sorted(per_query)]


def peak_of(detail: dict[str, Any]) -> float | None:
    """The rate LoadGen's FindPeakPerformance settled on (queries/s), None when it found none."""
    for message in reversed(detail.get("generic_message", [])):
        m = re.search(r"Found peak performance field:\s*([0-9.]+)", str(message))
        if m:
            return float(m.group(1))
    return None


def test_settings(scenario: str, settings: MeasureSettings, arrival: Arrival, expected_query_s: float,
                  expected_qps: float, seed: int, find_peak: bool = False):
    """LoadGen TestSettings for `scenario` and the dict of what was set (the record keeps it).
    MeasureSettings map to LoadGen's min/max query count and duration; `expected_query_s`
    (a query's seconds, from the warm-up) sets the Single/MultiStream expected latency at half
    of it, so LoadGen generates enough queries for the minimum duration; `expected_qps`
    (samples/s) sets Offline's expected rate 10 % above it for the same reason."""
    lg = loadgen_module()
    ts = lg.TestSettings()
    used: dict[str, Any] = {
        "scenario": LOADGEN_SCENARIOS[scenario],
        "mode": "FindPeakPerformance" if find_peak else "PerformanceOnly",
        "min_query_count": settings.min_count, "max_query_count": settings.max_count,
        "min_duration_ms": int(round(settings.min_duration_s * 1e3)),
        "max_duration_ms": int(round(settings.max_duration_s * 1e3)),
        "qsl_rng_seed": seed, "sample_index_rng_seed": seed + 1, "schedule_rng_seed": seed + 2,
    }
    expected_ns = max(int(expected_query_s * 0.5e9), 1_000)
    if scenario == "single-stream":
        used.update(single_stream_expected_latency_ns=expected_ns,
                    single_stream_target_latency_percentile=arrival.percentile / 100)
    elif scenario == "multi-stream":
        used.update(multi_stream_samples_per_query=settings.samples_per_query or DEFAULT_SAMPLES_PER_QUERY,
                    multi_stream_expected_latency_ns=expected_ns,
                    multi_stream_target_latency_percentile=arrival.percentile / 100)
    elif scenario == "server":
        used.update(server_target_qps=float(arrival.rate_hz),
                    server_target_latency_ns=int(arrival.latency_bound_ms * 1e6),
                    server_target_latency_percentile=arrival.percentile / 100)
        if find_peak:
            used.update(server_find_peak_qps_decimals_of_precision=0, server_find_peak_qps_boundary_step_size=1)
    elif scenario == "offline":
        used.update(offline_expected_qps=max(expected_qps * 1.1, 1.0))
    else:
        raise ValueError(f"LoadGen has no scenario '{scenario}' (it runs {', '.join(LOADGEN_SCENARIOS)})")
    for key, value in used.items():
        if key == "scenario":
            ts.scenario = getattr(lg.TestScenario, value)
        elif key == "mode":
            ts.mode = getattr(lg.TestMode, value)
        else:
            setattr(ts, key, value)
    return ts, used


def log_folder() -> tempfile.TemporaryDirectory:
    """A temporary folder for LoadGen's logs: inside the cell's private working folder when
    this runs as a cell (the runner names its parent), else the system's temporary folder;
    never the user's folder."""
    inside = os.getcwd() if os.environ.get("CHIPBENCH_PARENT_PID") else None
    return tempfile.TemporaryDirectory(prefix="loadgen-", dir=inside)


def start_test(issue: Callable[[list], None], flush: Callable[[], None], sample_count: int, ts, folder: Path,
               trace: bool) -> dict[str, Any]:
    """Run one LoadGen test with settings `ts` over a system under test (`issue`, `flush`:
    LoadGen's IssueQuery and FlushQueries callbacks) and a library of `sample_count` samples
    held in memory, logs in `folder`; returns the parsed detail log plus "summary" (the
    summary text) and "wall_s"."""
    lg = loadgen_module()
    folder.mkdir(parents=True, exist_ok=True)
    log = lg.LogSettings()
    log.log_output.outdir = str(folder)
    log.log_output.copy_summary_to_stdout = False
    log.enable_trace = trace
    sut = lg.ConstructSUT(issue, flush)
    qsl = lg.ConstructQSL(sample_count, sample_count, lambda _: None, lambda _: None)  # in memory already
    t0 = time.perf_counter()
    try:
        # an audit.config in the working folder would change the test: point LoadGen elsewhere
        lg.StartTestWithLogSettings(sut, qsl, ts, log, str(folder / "no-audit.config"))
    finally:
        wall = time.perf_counter() - t0
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
    detail = parse_detail((folder / "mlperf_log_detail.txt").read_text(errors="replace"))
    detail["summary"] = (folder / "mlperf_log_summary.txt").read_text(errors="replace")
    detail["wall_s"] = wall
    return detail


def warm_up(adapter: Adapter, settings: MeasureSettings, runs_per_query: int) -> float:
    """Untimed warm-up as `scenarios.measure` does it (`warmup_count` runs and `warmup_s`
    seconds, within `max_duration_s`); returns the median seconds of one query (its
    `runs_per_query` compiled runs)."""
    indices = list(range(min(adapter.per_run, len(adapter.samples))))
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max(settings.warmup_count, 1) or time.perf_counter() - start < settings.warmup_s:
        t0 = time.perf_counter()
        adapter.run(adapter.inputs_for(indices))
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > settings.max_duration_s:
            break
    adapter.padded_runs = adapter.padded_samples = 0
    return float(np.median(times)) * runs_per_query


def run_scenario(scenario: str, run: Callable[[Arrays], Arrays], samples: SampleSet, batch: int,
                 settings: MeasureSettings, arrival: Arrival, seed: int = 0) -> LoadGenRun:
    """Warm up, run `scenario` (single-stream, multi-stream, server, offline through LoadGen;
    fixed-rate through chipbench.fixed_rate) over `run` at the compiled `batch`, and check the
    kept responses (TEST01, `Adapter.check_kept`). Server with `settings.find_peak` first lets LoadGen's
    FindPeakPerformance search the highest rate meeting the bound, then measures at that rate.
    ValueError for an unknown scenario; LoadGenUnavailable without LoadGen."""
    p = settings.accuracy_log_probability
    adapter = Adapter(run, samples, batch, DEFAULT_ACCURACY_LOG_PROBABILITY if p is None else p, seed)
    spq = settings.samples_per_query or DEFAULT_SAMPLES_PER_QUERY
    units_per_query = {"multi-stream": spq, "offline": batch}.get(scenario, 1)
    runs_per_query = max(1, math.ceil(units_per_query / batch)) if scenario == "multi-stream" else 1
    query_s = warm_up(adapter, settings, runs_per_query)
    notes: list[str] = []
    details: dict[str, Any] = {"samples": samples.describe(), "arrival": _arrival_dict(arrival)}
    if scenario == "fixed-rate":
        return _fixed_rate(adapter, settings, arrival, seed, details)
    expected_qps = batch / query_s if query_s > 0 else 1e6
    with log_folder() as tmp:
        folder = Path(tmp)
        if scenario == "server" and settings.find_peak:
            ts, used = test_settings(scenario, settings, arrival, query_s, expected_qps, seed, find_peak=True)
            peak_detail = start_test(adapter.issue, adapter.flush, len(samples), ts, folder / "peak", trace=False)
            peak = peak_of(peak_detail)
            details["find_peak"] = {"method": "LoadGen FindPeakPerformance", "peak_qps": peak,
                                    "latency_bound_ms": arrival.latency_bound_ms, "percentile": arrival.percentile,
                                    "settings": used}
            if peak:
                arrival = Arrival(peak, arrival.latency_bound_ms, arrival.percentile, "LoadGen FindPeakPerformance")
                details["arrival"] = _arrival_dict(arrival)  # the rate the timed run was measured at
            else:
                notes.append("LoadGen's peak search found no rate meeting the bound; measured at the target rate")
            adapter.kept.clear()
        ts, used = test_settings(scenario, settings, arrival, query_s, expected_qps, seed)
        adapter.run_s.clear()
        detail = start_test(adapter.issue, adapter.flush, len(samples), ts, folder / "run",
                            trace=scenario != "offline")
        if scenario == "offline":
            samples_s = list(adapter.run_s)
            details["samples_per_s"] = detail.get("result_samples_per_second")
        else:
            samples_s = trace_latencies(folder / "run" / "mlperf_log_trace.json")
    result, reasons = verdict_of(detail)
    details["loadgen_summary_stats"] = {k: v for k, v in detail.items() if k.startswith("result_")
                                        and isinstance(v, (int, float)) and not isinstance(v, bool)}
    if adapter.padded_runs:
        notes.append(f"{adapter.padded_runs} compiled batch(es) padded to the compiled batch by repeating "
                     f"{adapter.padded_samples} sample(s); their extra outputs are discarded")
    if not samples_s:
        raise RuntimeError(f"LoadGen {scenario} completed no query ({'; '.join(reasons) or 'no reason given'})")
    return LoadGenRun(samples_s, used, result, reasons, detail["summary"], adapter.check_kept(),
                      "loadgen", details, notes)


def _arrival_dict(arrival: Arrival) -> dict[str, Any]:
    return {"rate_hz": arrival.rate_hz, "latency_bound_ms": arrival.latency_bound_ms,
            "percentile": arrival.percentile, "from": arrival.why}


def _fixed_rate(adapter: Adapter, settings: MeasureSettings, arrival: Arrival, seed: int,
                details: dict[str, Any]) -> LoadGenRun:
    from chipbench.fixed_rate import issue_fixed_rate

    used = {"scenario": "fixed-rate", "rate_hz": arrival.rate_hz, "latency_bound_ms": arrival.latency_bound_ms,
            "percentile": arrival.percentile, "min_query_count": settings.min_count,
            "max_query_count": settings.max_count, "min_duration_s": settings.min_duration_s,
            "max_duration_s": settings.max_duration_s, "seed": seed}
    fr = issue_fixed_rate(lambda i: adapter.answer([i]), len(adapter.samples), arrival.rate_hz,
                          min_count=settings.min_count, min_duration_s=settings.min_duration_s,
                          max_duration_s=settings.max_duration_s, max_count=settings.max_count,
                          latency_bound_ms=arrival.latency_bound_ms, percentile=arrival.percentile, seed=seed)
    lateness = [i - d for i, d in zip(fr.issued_s, fr.due_s)]
    details["wall_s"] = fr.wall_s
    details["issue_lateness_ms"] = {"median": float(np.median(lateness)) * 1e3, "max": float(np.max(lateness)) * 1e3}
    summary = (f"fixed-rate {arrival.rate_hz:g} Hz: {len(fr.samples_s)} queries in {fr.wall_s:.3g} s; "
               f"p{arrival.percentile:g} {np.percentile(fr.samples_s, arrival.percentile) * 1e3:.4g} ms "
               f"(bound {arrival.latency_bound_ms:g} ms); result {fr.result}"
               + (f" ({'; '.join(fr.reasons)})" if fr.reasons else ""))
    return LoadGenRun(fr.samples_s, used, fr.result, fr.reasons, summary, adapter.check_kept(),
                      "chipbench", details)


def null_overhead(scenario: str = "single-stream", queries: int = 20_000, seed: int = 0) -> dict[str, Any]:
    """LoadGen's own per-query cost, measured through the `Adapter` with a null model (one that
    hands back a canned output, as `backends/null.py` does), beside the bare loop's
    (`scenarios.measure` over the same null query). Returns microseconds per query:
    {"scenario", "loadgen_us" (median query latency; offline: wall time per sample),
    "bare_loop_us" (median), "queries"}. No model or backend is needed."""
    from chipbench.scenarios import measure

    x = {"x": np.zeros((1, 4), np.float32)}
    out = {"y": np.zeros((1, 4), np.float32)}

    def null_run(_inputs: Arrays) -> Arrays:
        return out

    samples = SampleSet([x] * 32, 1, "null")
    batch = DEFAULT_SAMPLES_PER_QUERY if scenario in ("multi-stream", "offline") else 1
    settings = MeasureSettings(warmup_count=100, warmup_s=0.0, min_count=queries, max_count=queries,
                               min_duration_s=0.0, max_duration_s=60.0, accuracy_log_probability=0.0)
    # Server at 1,000 queries/s: far below what a null model sustains, so no queue builds up
    arrival = Arrival(1e3, 1000.0, 99.0, "null overhead")
    lgrun = run_scenario(scenario, null_run, samples, batch, settings, arrival, seed)
    if scenario == "offline":
        stats = lgrun.details.get("loadgen_summary_stats", {})
        rate = stats.get("result_samples_per_second")
        loadgen_us = 1e6 / rate if rate else float("nan")
    else:
        loadgen_us = float(np.median(lgrun.samples_s)) * 1e6
    bare = measure(lambda: null_run(x), settings)
    return {"scenario": scenario, "loadgen_us": loadgen_us, "bare_loop_us": float(np.median(bare.samples_s)) * 1e6,
            "queries": len(lgrun.samples_s)}
