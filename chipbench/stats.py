"""Latency statistics: exact order statistics plus a bootstrap confidence interval of the median,
and the tail percentiles with LoadGen's early-stopping bound (chipbench.tails)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from chipbench.tails import TailEstimate, tails


@dataclass(frozen=True)
class LatencyStats:
    """Per-query latency in milliseconds: the record's `latency` part. p90/p99/p999 are numpy's
    interpolated sample percentiles whatever the count; `tails` holds the same three with their
    early-stopping upper bounds, or "not estimable" where the count cannot support them
    (chipbench.tails). `samples`: the raw per-query latencies (seconds) as chipbench.samples
    encodes them (the store's index keeps their count only); `bare_loop_median_ms`: the bare
    timing loop's median, kept where LoadGen's own per-query cost is a visible share."""

    count: int
    median: float
    p90: float
    p99: float
    mean: float
    stdev: float
    min: float
    max: float
    median_ci95: tuple[float, float]
    unit: str = "ms"
    p999: float | None = None
    tails: dict[str, TailEstimate] = field(default_factory=dict)
    samples: dict | None = field(default=None, repr=False)
    bare_loop_median_ms: float | None = None

    @classmethod
    def from_samples(cls, seconds: np.ndarray | list[float], seed: int = 0, resamples: int = 1000) -> LatencyStats:
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        if ms.size == 0:
            raise ValueError("no latency samples")
        return cls(
            count=int(ms.size),
            median=float(np.median(ms)),
            p90=float(np.percentile(ms, 90)),
            p99=float(np.percentile(ms, 99)),
            mean=float(ms.mean()),
            stdev=float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
            min=float(ms.min()),
            max=float(ms.max()),
            median_ci95=bootstrap_median_ci(ms, seed=seed, resamples=resamples),
            p999=float(np.percentile(ms, 99.9)),
            tails=tails(ms),
        )

    def to_dict(self) -> dict:
        """The record's JSON form (chipbench/schema/run_record.schema.json `latency`)."""
        d = asdict(self)
        d["median_ci95"] = list(self.median_ci95)
        d["tails"] = {name: t.to_dict() for name, t in self.tails.items()}
        return {k: v for k, v in d.items() if v is not None and v != {}}  # what a record lacks stays absent

    @classmethod
    def from_dict(cls, data: dict) -> LatencyStats:
        """The latency part of a stored record (schema 1 or 2: tails, p999 and samples optional).
        KeyError or TypeError when a required figure is missing."""
        d = dict(data)
        d["median_ci95"] = tuple(d["median_ci95"])
        d["tails"] = {name: TailEstimate.from_dict(name, int(d["count"]), t) for name, t in (d.get("tails") or {}).items()}
        return cls(**d)


BOOTSTRAP_MAX_N = 5000


def bootstrap_median_ci(
    samples: np.ndarray, level: float = 0.95, seed: int = 0, resamples: int = 1000
) -> tuple[float, float]:
    """Percentile bootstrap of the median: resample with replacement, take the central interval.

    Past BOOTSTRAP_MAX_N samples the bootstrap costs seconds and agrees with the
    distribution-free order-statistic interval, which is used instead."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.size == 1:
        return float(samples[0]), float(samples[0])
    if samples.size > BOOTSTRAP_MAX_N:
        return order_statistic_median_ci(samples, level)
    rng = np.random.default_rng(seed)
    # Resample in chunks so a long run does not allocate resamples × n at once.
    medians = np.empty(resamples)
    chunk = max(1, 2_000_000 // samples.size)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, samples.size, size=(stop - start, samples.size))
        medians[start:stop] = np.median(samples[idx], axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(medians, [alpha, 1 - alpha])
    return float(lo), float(hi)


def order_statistic_median_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The median's interval from order statistics: the rank of the median is binomial(n, 1/2)."""
    from statistics import NormalDist

    n = samples.size
    z = NormalDist().inv_cdf(0.5 + level / 2)
    half = z * np.sqrt(n) / 2
    lo, hi = int(np.floor(n / 2 - half)), int(np.ceil(n / 2 + half))
    ordered = np.sort(samples)
    return float(ordered[max(lo, 0)]), float(ordered[min(hi, n - 1)])
