"""The fixed-rate scenario: queries arrive at constant intervals (`rate_hz`), as a camera or a
sensor line delivers them. LoadGen 6.0.17 has no such scenario, so this small issuer drives the
same adapter and sample library (chipbench.loadgen) and judges the run by the same rules:
minimum query count, minimum duration, latency bound at a percentile.

Query k is due at `start + k / rate_hz`. The issuer waits until it is due, or issues it at once
when the previous answer came late (one worker, as on the line: a backlog builds up and shows
in the latency). A query's latency is its completion time minus its due time, as LoadGen
measures a Server query from its scheduled time, so queueing behind a slow answer counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class FixedRateRun:
    """Per-query latencies `samples_s` (seconds, from due time to completion), the `due_s` and
    `issued_s` times of each query (seconds from the start), the wall time, and the verdict:
    `result` VALID or INVALID with `reasons`."""

    samples_s: list[float]
    due_s: list[float]
    issued_s: list[float]
    wall_s: float
    result: str
    reasons: list[str] = field(default_factory=list)


def percentile_ms(samples_s: list[float], percentile: float) -> float:
    """The `percentile`-th percentile of `samples_s` in ms (numpy's linear interpolation)."""
    return float(np.percentile(np.asarray(samples_s) * 1e3, percentile))


def issue_fixed_rate(answer: Callable[[int], None], n_samples: int, rate_hz: float, *, min_count: int,
                     min_duration_s: float, max_duration_s: float, max_count: int, latency_bound_ms: float,
                     percentile: float, seed: int = 0, clock: Callable[[], float] = time.perf_counter,
                     sleep: Callable[[float], None] = time.sleep) -> FixedRateRun:
    """Issue queries at `rate_hz` (queries per second) to `answer(sample_index)`, which returns
    once the answer is complete; sample indices rotate through a seeded permutation of
    `n_samples`. Stops when both `min_count` queries and `min_duration_s` seconds are done, at
    `max_count` queries, or at `max_duration_s` seconds. VALID when both minimums were met and
    the `percentile`-th latency percentile is within `latency_bound_ms`; each failed rule is a
    reason. `clock` and `sleep` are injectable (seconds) for tests. ValueError for a rate or a
    sample count that is not positive."""
    if not rate_hz > 0 or n_samples < 1:
        raise ValueError(f"fixed-rate needs rate_hz > 0 and at least one sample, got {rate_hz}, {n_samples}")
    period = 1.0 / rate_hz
    order = np.random.default_rng(seed).permutation(n_samples)
    samples: list[float] = []
    due_s: list[float] = []
    issued_s: list[float] = []
    start = clock()
    k = 0
    while True:
        due = k * period
        now = clock() - start
        if now >= max_duration_s and k:
            break
        if due > now:
            sleep(due - now)
        issued_s.append(clock() - start)
        answer(int(order[k % n_samples]))
        done = clock() - start
        samples.append(done - due)
        due_s.append(due)
        k += 1
        if (k >= min_count and done >= min_duration_s) or k >= max_count or done >= max_duration_s:
            break
    wall = clock() - start
    reasons = []
    if k < min_count:
        reasons.append(f"min queries not met: {k} < {min_count}")
    if wall < min_duration_s:
        reasons.append(f"min duration not met: {wall:.3g} s < {min_duration_s:g} s")
    tail = percentile_ms(samples, percentile)
    if tail > latency_bound_ms:
        reasons.append(f"latency bound not met: p{percentile:g} {tail:.3g} ms > {latency_bound_ms:g} ms")
    return FixedRateRun(samples, due_s, issued_s, wall, "INVALID" if reasons else "VALID", reasons)
