"""MLPerf-named scenarios. SingleStream: one sample per query, latency. MultiStream: a query of
`samples_per_query` samples (8 by default), latency of the whole query. Server: Poisson arrivals at
a target rate, latency under a bound at a percentile. Offline: batch B, throughput. fixed-rate:
constant inter-arrival at `rate_hz` (a camera or a sensor line). Host-clock cells run them through
MLPerf LoadGen (chipbench.loadgen; fixed-rate through chipbench.fixed_rate).

The timed loop is kept bare (a clock read and an append per query) so that the harness's own
overhead, measured with the null backend, stays far below what any real backend takes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from chipbench.quiet import default_quiet_cores

SCENARIOS = ("single-stream", "multi-stream", "server", "offline", "fixed-rate", "generation")  # generation: chipbench.generation
DEFAULT_SAMPLES_PER_QUERY = 8  # MLPerf MultiStream


@dataclass(frozen=True)
class MeasureSettings:
    """How a cell is timed. Warm-up runs `warmup_count` queries and at least `warmup_s` seconds,
    untimed. Then each query is timed alone (a clock read before and after it, in seconds)
    until at least `min_count` queries and `min_duration_s` seconds are measured, or
    `max_count` queries; a slow cell stops at `max_duration_s` with at least 3 queries, and the
    record says so. Offline queries carry `offline_batch` samples unless the cell sets a batch.

    Through LoadGen, min_count/max_count are its min/max query counts and min/max_duration_s its
    min/max durations. The arrival settings default to None, meaning the workload's own
    (`Workload.arrival`): `samples_per_query` (MultiStream, else 8), `target_qps` (Server, queries
    per second), `rate_hz` (fixed-rate, queries per second), `latency_bound_ms` and `percentile`
    (the bound the Server and fixed-rate verdicts check, e.g. 33 ms at p99), `find_peak` (Server:
    search the highest rate meeting the bound), `accuracy_log_probability` (share of timed
    responses checked against the backend's own untimed answers, MLPerf TEST01, 0..1; None = 0.05).
    `quiet_cores`: other work (in cores busy) above which the machine is too busy and the cell
    NOISY, checked just before and after the timed run (chipbench.quiet; None: not checked)."""

    warmup_count: int = 3
    warmup_s: float = 0.2
    min_count: int = 20
    min_duration_s: float = 1.0
    max_duration_s: float = 60.0  # a slow cell stops here (with at least 3 samples), saying so
    max_count: int = 100_000  # a fast cell has enough samples here, whatever the duration
    offline_batch: int = 8
    samples_per_query: int | None = None
    target_qps: float | None = None
    rate_hz: float | None = None
    latency_bound_ms: float | None = None
    percentile: float | None = None
    find_peak: bool = False
    accuracy_log_probability: float | None = None
    # generation (chipbench.generation): prompts of these lengths (tokens), distinct prompts
    # per length, tokens generated per query
    prompt_lens: tuple[int, ...] = (32, 64, 128, 256)
    prompts_per_len: int = 2
    output_tokens: int = 32

    def __post_init__(self) -> None:
        if isinstance(self.prompt_lens, list):  # from TOML or JSON
            object.__setattr__(self, "prompt_lens", tuple(self.prompt_lens))
    quiet_cores: float | None = field(default_factory=default_quiet_cores)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prompt_lens"] = list(self.prompt_lens)
        return d


@dataclass(frozen=True)
class Measurement:
    samples_s: list[float]
    wall_s: float
    note: str | None


Clock = Callable[[], float]


def measure(query: Callable[[], object], settings: MeasureSettings, clock: Clock = time.perf_counter) -> Measurement:
    """Warm up, then time `query` until both the minimum count and duration are met.

    `clock()` returns seconds (monotonic; `time.perf_counter` by default; tests pass a fake one
    that advances by a scripted amount per call). Warm-up runs until both `warmup_count` queries
    and `warmup_s` seconds are done, or stops after `max_duration_s`. Each timed query costs two
    clock reads; the stopping rules are `stop`'s."""
    start = clock()
    n = 0
    while n < settings.warmup_count or clock() - start < settings.warmup_s:
        query()
        n += 1
        if clock() - start > settings.max_duration_s and n >= 1:
            break
    samples: list[float] = []
    append = samples.append
    begin = clock()
    now = begin
    while True:
        t0 = clock()
        query()
        now = clock()
        append(now - t0)
        done, note = stop(settings, len(samples), now - begin, now - begin)
        if done:
            break
    return Measurement(samples, now - begin, note)


def stop(settings: MeasureSettings, count: int, measured_s: float, wall_s: float) -> tuple[bool, str | None]:
    """Whether timing stops after `count` queries that took `measured_s` seconds by the clock
    that times them, `wall_s` seconds of wall time; with the note a record carries when it
    stopped at max_duration_s before a minimum was met (naming the minimums it missed)."""
    if (measured_s >= settings.min_duration_s and count >= settings.min_count) or count >= settings.max_count:
        return True, None
    if wall_s >= settings.max_duration_s and count >= 3:
        missed = [f"{count} < min_count={settings.min_count} queries"] if count < settings.min_count else []
        if measured_s < settings.min_duration_s:
            missed.append(f"{measured_s:.3g} s < min_duration_s={settings.min_duration_s:g} measured")
        return True, f"stopped at max_duration_s={settings.max_duration_s:g} with " + " and ".join(missed)
    return False, None


def measure_on_device(timer: Callable[[int], list[float]], settings: MeasureSettings,
                      clock: Clock = time.perf_counter) -> Measurement:
    """`measure` with the device's own clock: `timer(n)` runs `n` queries back to back on the
    device and returns each one's seconds (CUDA events, TVM `time_evaluator`). Warm-up is
    `warmup_count` queries; the minimum duration counts device time; `max_duration_s` bounds
    the wall time, which includes what the device does not time (transfers, the network), by
    `clock()` (seconds; `time.perf_counter` by default, a fake one in tests)."""
    timer(max(settings.warmup_count, 1))
    samples: list[float] = []
    begin = clock()
    chunk = 1
    while True:
        samples.extend(timer(chunk))
        measured = sum(samples)
        done, note = stop(settings, len(samples), measured, clock() - begin)
        if done:
            break
        # grow the batch of queries per round trip, never past what the minimums still need
        per_query = measured / len(samples) if measured > 0 else 1e-6
        need = max(settings.min_count - len(samples), int((settings.min_duration_s - measured) / per_query) + 1, 1)
        chunk = min(chunk * 2, need, settings.max_count - len(samples), 1000)
    return Measurement(samples, clock() - begin, note)


def batch_for(scenario: str, batch: int | None, settings: MeasureSettings) -> int:
    """Samples per compiled query: 1 for single-stream, server and fixed-rate (one sample a
    query), `samples_per_query` (8 by default) for multi-stream, the cell's batch or
    `offline_batch` for offline; 1 for generation (one prompt a query). ValueError for an unknown scenario."""
    if scenario in ("single-stream", "server", "fixed-rate", "generation"):
        return 1
    if scenario == "multi-stream":
        return batch or settings.samples_per_query or DEFAULT_SAMPLES_PER_QUERY
    if scenario == "offline":
        return batch or settings.offline_batch
    raise ValueError(f"unknown scenario '{scenario}' (known: {', '.join(SCENARIOS)})")
