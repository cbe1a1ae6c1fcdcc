"""Tail latency with confidence: MLPerf LoadGen's early-stopping bound on p90, p99 and p99.9.

A percentile read off a short run is a guess: the p99 of 20 queries is the largest but one
of them. LoadGen's early stopping (mlcommons/inference, `loadgen/early_stopping.cc` and
`loadgen/results.cc`, `PerformanceSummary::EarlyStopping`; rationale in the MLPerf Inference
rules, mlcommons/inference_policies `inference_rules.adoc`, "Early stopping") instead reports an order
statistic that is an upper bound of the percentile at 99 % confidence, and refuses to report
one when the run is too short to support it.

The rule, restated (this module implements it independently; no code is shared): call a
query that takes at least the candidate latency L an *overlatency* query. If the true
probability of a query reaching L were as high as 1 - p, then seeing at most t overlatency
queries among n would have probability

    P(X <= t),  X ~ Binomial(n, 1 - p)            (LoadGen writes it BetaRegularized[p, n - t, 1 + t])

When that probability is at most 1 - c (c = 0.99), L bounds the p-th percentile with
confidence c. LoadGen takes the largest t that still passes and reports the t-th largest
sample as the bound; with t = 1 failing, the percentile is not estimable. The minimum count
is the smallest n for which t = 1 passes: 64 for p90, 662 for p99 and 6,636 for p99.9
(LoadGen prints the last two as "Need to process at least ... queries for early stopping").
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.99  # LoadGen's early-stopping confidence (results.cc: `double confidence = 0.99`)
TAIL_PERCENTILES = (("p90", 0.90), ("p99", 0.99), ("p999", 0.999))


def _log_cdf(n: int, q: float, kmax: int) -> np.ndarray:
    """log P(X <= k) for k = 0..kmax, X ~ Binomial(n, q): log binomial coefficients by a running
    sum of log((n - j + 1) / j), so that neither p**n nor a coefficient overflows or underflows."""
    k = np.arange(kmax + 1, dtype=np.float64)
    j = k[1:]
    log_choose = np.concatenate(([0.0], np.cumsum(np.log(n - j + 1) - np.log(j))))
    log_pmf = log_choose + k * math.log(q) + (n - k) * math.log1p(-q)
    return np.logaddexp.accumulate(log_pmf)


def _passes(n: int, p: float, t: int, confidence: float) -> bool:
    return bool(_log_cdf(n, 1.0 - p, t)[t] <= math.log1p(-confidence))


def over_with_confidence(n: int, late: int, p: float, confidence: float = CONFIDENCE) -> bool:
    """Whether `late` of `n` queries over a latency show the `p` percentile above it at
    `confidence`: P(X >= late) <= 1 - confidence for X ~ Binomial(n, 1 - p), the most a
    percentile within that latency allows (the same binomial law as the early-stopping bound,
    from the other side). False when no query is late."""
    if late <= 0 or n <= 0:
        return False
    return bool(_log_cdf(n, 1.0 - p, late - 1)[late - 1] >= math.log(confidence))


@functools.cache
def min_count(p: float, confidence: float = CONFIDENCE) -> int:
    """The fewest queries for which the early-stopping bound of the `p` percentile exists at
    `confidence` (one overlatency query allowed): 64 for p = 0.90, 662 for 0.99, 6,636 for
    0.999 at c = 0.99, LoadGen's counts. ValueError unless 0 < p < 1 and 0 < confidence < 1."""
    if not (0.0 < p < 1.0 and 0.0 < confidence < 1.0):
        raise ValueError(f"percentile {p} and confidence {confidence} must lie in (0, 1)")
    lo = max(2, math.ceil(math.log1p(-confidence) / math.log(p)))  # zero overlatency queries: fewer never pass
    hi = lo
    while not _passes(hi, p, 1, confidence):
        lo, hi = hi, hi * 2
    while lo < hi:  # smallest passing n in [lo, hi]; passing is monotone in n
        mid = (lo + hi) // 2
        if _passes(mid, p, 1, confidence):
            hi = mid
        else:
            lo = mid + 1
    return hi


def overlatency_allowance(n: int, p: float, confidence: float = CONFIDENCE) -> int:
    """The largest t such that at most t overlatency queries in `n` still bound the `p`
    percentile at `confidence` (LoadGen's t); 0 when n is below `min_count(p, confidence)`."""
    if n < min_count(p, confidence):
        return 0
    q = 1.0 - p
    kmax = min(n - 1, math.ceil(n * q) + 1)  # the CDF passes the median near n*q, far above 1 - c
    passing = _log_cdf(n, q, kmax) <= math.log1p(-confidence)
    return max(1, int(np.count_nonzero(passing)) - 1)


@dataclass(frozen=True)
class TailEstimate:
    """One tail percentile of per-query latencies, in milliseconds.

    `value`: the sample percentile (numpy's linear interpolation, as `LatencyStats.p99`);
    `upper_bound`: LoadGen's early-stopping bound, the t-th largest sample, which the true
    percentile stays below with probability `confidence`; both None when not estimable, with
    `reason` saying "not estimable (n = 20 < 662)"."""

    name: str  # p90, p99, p999
    percentile: float  # 0.90, 0.99, 0.999
    count: int
    min_count: int
    value: float | None
    upper_bound: float | None
    confidence: float = CONFIDENCE

    @property
    def estimable(self) -> bool:
        return self.upper_bound is not None

    @property
    def reason(self) -> str | None:
        return None if self.estimable else f"not estimable (n = {self.count} < {self.min_count})"

    def to_dict(self) -> dict:
        """The shared record form: value, upper_bound (ms or None), estimable, min_count, reason,
        plus the confidence of the bound."""
        return {"value": self.value, "upper_bound": self.upper_bound, "estimable": self.estimable,
                "min_count": self.min_count, "reason": self.reason, "confidence": self.confidence}

    @classmethod
    def from_dict(cls, name: str, count: int, data: dict) -> TailEstimate:
        """The estimate a record stored as `to_dict` gave it, for the percentile `name` (p90, p99,
        p999) of `count` samples. KeyError for another name."""
        return cls(name, dict(TAIL_PERCENTILES)[name], count, int(data["min_count"]), data.get("value"),
                   data.get("upper_bound"), float(data.get("confidence", CONFIDENCE)))


def tail_estimate(ms: np.ndarray, name: str, p: float, confidence: float = CONFIDENCE) -> TailEstimate:
    """The `p` percentile of latencies `ms` (milliseconds, any order, n >= 1) with its bound."""
    ordered = np.sort(np.asarray(ms, dtype=np.float64))
    n = int(ordered.size)
    if n == 0:
        raise ValueError("no latency samples")
    need = min_count(p, confidence)
    t = overlatency_allowance(n, p, confidence)
    if t == 0:
        return TailEstimate(name, p, n, need, None, None, confidence)
    return TailEstimate(name, p, n, need, float(np.percentile(ordered, p * 100)), float(ordered[n - t]), confidence)


def tails(ms: np.ndarray, confidence: float = CONFIDENCE) -> dict[str, TailEstimate]:
    """p90, p99 and p99.9 of latencies `ms` (milliseconds) with their early-stopping bounds."""
    return {name: tail_estimate(ms, name, p, confidence) for name, p in TAIL_PERCENTILES}


def describe(tail: TailEstimate | None, digits: int = 3) -> str:
    """A record's tail (`latency.tails[name]`) as a report shows it: "1.23 ms (≤ 1.31 at 99 %)"
    or "not estimable (n = 20 < 662)"; "–" when the record has none."""
    if tail is None:
        return "–"
    if not tail.estimable:
        return tail.reason or "not estimable"
    return f"{tail.value:.{digits}g} ms (≤ {tail.upper_bound:.{digits}g} at {tail.confidence * 100:g} %)"
