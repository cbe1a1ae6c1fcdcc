"""Tail percentiles with LoadGen's early-stopping bound, and raw samples kept with the record."""

import json

import numpy as np
import pytest
from scipy.stats import binom

from chipbench.cell import base_record
from chipbench.record import validate
from chipbench.suite import Cell
from chipbench.recording import measured_fields
from chipbench.accuracy import Tolerance
from chipbench.report import p99_summary
from chipbench.samples import SamplesError, decode, encode
from chipbench.stats import LatencyStats
from chipbench.tails import describe, min_count, overlatency_allowance, tail_estimate


def test_minimum_counts_are_loadgens():
    # LoadGen: "Need to process at least 662 queries" (p99), 6,636 (p99.9); 64 for p90
    assert min_count(0.99) == 662
    assert min_count(0.999) == 6636
    assert min_count(0.90) == 64


@pytest.mark.parametrize("p", [0.90, 0.99, 0.999])
@pytest.mark.parametrize("n", [700, 5_000, 20_000, 123_457])
def test_allowance_is_the_largest_passing_count_of_an_independent_binomial(p, n):
    """The largest t with P(Binomial(n, 1 - p) <= t) <= 1 - 0.99, by scipy (LoadGen's rule)."""
    if n < min_count(p):
        assert overlatency_allowance(n, p) == 0
        return
    t = overlatency_allowance(n, p)
    assert binom.cdf(t, n, 1 - p) <= 0.01 < binom.cdf(t + 1, n, 1 - p)


def test_below_the_minimum_count_a_tail_is_not_estimable():
    ms = np.linspace(1.0, 2.0, 20)
    tail = tail_estimate(ms, "p99", 0.99)
    assert not tail.estimable and tail.value is None and tail.upper_bound is None
    assert tail.reason == "not estimable (n = 20 < 662)"
    assert describe(tail) == "not estimable (n = 20 < 662)"
    at_661 = tail_estimate(np.arange(661.0), "p99", 0.99)
    at_662 = tail_estimate(np.arange(662.0), "p99", 0.99)
    assert not at_661.estimable and at_662.estimable
    assert at_662.upper_bound == 661.0  # one overlatency query allowed: the largest sample


def test_the_bound_is_an_order_statistic_above_the_percentile():
    rng = np.random.default_rng(0)
    ms = rng.lognormal(0, 0.3, 50_000)
    tail = tail_estimate(ms, "p99", 0.99)
    t = overlatency_allowance(ms.size, 0.99)
    assert tail.upper_bound == np.sort(ms)[ms.size - t]
    assert tail.value == pytest.approx(np.percentile(ms, 99))
    assert tail.value < tail.upper_bound
    assert describe(tail).endswith("at 99 %)")


def test_the_bound_covers_the_true_percentile_at_least_99_percent_of_the_time():
    rng = np.random.default_rng(7)
    true_p99 = float(np.exp(0.3 * 2.3263478740408408))  # lognormal(0, 0.3): exp(sigma * z_0.99)
    misses = sum(tail_estimate(rng.lognormal(0, 0.3, 1000), "p99", 0.99).upper_bound < true_p99
                 for _ in range(300))
    assert misses <= 9  # 1 % of 300 expected at most; binomial 99.9th percentile is 9


def test_latency_stats_carry_p999_and_tails_in_the_shared_form():
    d = LatencyStats.from_samples(np.linspace(1e-3, 2e-3, 1000)).to_dict()
    assert d["p999"] == pytest.approx(np.percentile(np.linspace(1, 2, 1000), 99.9))
    assert set(d["tails"]) == {"p90", "p99", "p999"}
    assert d["tails"]["p99"]["estimable"] and d["tails"]["p99"]["min_count"] == 662
    assert d["tails"]["p999"] == {"value": None, "upper_bound": None, "estimable": False, "min_count": 6636,
                                  "reason": "not estimable (n = 1000 < 6636)", "confidence": 0.99}
    stats = LatencyStats.from_dict(d)
    assert stats == LatencyStats.from_samples(np.linspace(1e-3, 2e-3, 1000))  # the stored form reads back whole
    assert "≤" in p99_summary(stats) and "at 99 %" in p99_summary(stats)
    old = LatencyStats.from_dict({k: v for k, v in d.items() if k != "tails"})
    assert p99_summary(old) == f"{d['p99']:.3g}"  # records from before tails: the bare p99


def test_samples_round_trip_in_float32_and_order():
    x = np.random.default_rng(1).lognormal(-7, 0.5, 5000)
    stored = encode(x)
    assert stored["encoding"] == "f32-zlib-b64" and stored["unit"] == "s" and stored["count"] == 5000
    back = decode(json.loads(json.dumps(stored)))
    np.testing.assert_allclose(back, x, rtol=1e-7)
    assert np.array_equal(back, x.astype(np.float32).astype(np.float64))


@pytest.mark.parametrize("bad", [{"encoding": "f64-raw"}, {"data": "!!!not base64"}, {"count": 4999},
                                 {"unit": "ms"}, {"data": None}])
def test_damaged_samples_are_refused(bad):
    stored = {**encode(np.full(5000, 1e-3)), **bad}
    with pytest.raises(SamplesError):
        decode(stored)


def test_empty_or_non_finite_samples_are_refused():
    with pytest.raises(ValueError):
        encode([])
    with pytest.raises(ValueError):
        encode([1e-3, float("nan")])


def test_measured_fields_keep_the_samples_and_the_record_validates():
    x = np.random.default_rng(2).lognormal(-7, 0.2, 100_000)
    out = {"y": np.ones(3)}
    fields = measured_fields(list(x), 1, out, out, Tolerance(max_abs=1e-3, rel_l2=1e-3, min_cosine=0.99), {})
    assert fields["latency"].samples["count"] == 100_000
    np.testing.assert_allclose(decode(fields["latency"].samples), x, rtol=1e-7)
    rec = base_record(Cell(workload="vibration-cnn1d", backend="null"), "ok", **fields)
    validate(json.loads(rec.to_json()))
    assert len(rec.to_json()) < 600_000  # 100k float32 latencies: ~4.4 bytes each once encoded
