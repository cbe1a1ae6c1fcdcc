import numpy as np
import pytest

from chipbench.accuracy import Fidelity, check, fidelity
from chipbench.stats import LatencyStats, bootstrap_median_ci
from chipbench.workloads.base import Tolerance


def test_order_statistics_match_numpy_in_milliseconds():
    seconds = np.arange(1, 101) / 1000.0  # 1..100 ms
    s = LatencyStats.from_samples(seconds)
    assert s.count == 100
    assert s.median == pytest.approx(50.5)
    assert s.p90 == pytest.approx(np.percentile(np.arange(1, 101), 90))
    assert s.p99 == pytest.approx(99.01)
    assert (s.min, s.max) == (pytest.approx(1.0), pytest.approx(100.0))
    assert s.mean == pytest.approx(50.5)
    assert s.stdev == pytest.approx(np.std(np.arange(1, 101), ddof=1))
    assert s.unit == "ms"


def test_bootstrap_ci_brackets_the_median_and_is_reproducible():
    rng = np.random.default_rng(1)
    x = rng.lognormal(0, 0.3, 500)
    lo, hi = bootstrap_median_ci(x, seed=3)
    assert lo <= np.median(x) <= hi
    assert hi - lo < 0.2
    assert (lo, hi) == bootstrap_median_ci(x, seed=3)


def test_single_sample_has_a_degenerate_interval():
    s = LatencyStats.from_samples([0.002])
    assert s.median_ci95 == (2.0, 2.0) and s.stdev == 0.0


def test_no_samples_is_an_error():
    with pytest.raises(ValueError):
        LatencyStats.from_samples([])


def test_fidelity_hand_computed():
    ref = {"y": np.array([3.0, 4.0], dtype=np.float32)}
    got = {"y": np.array([3.0, 4.5], dtype=np.float32)}
    f = fidelity(got, ref)
    assert f.max_abs == pytest.approx(0.5)
    assert f.rel_l2 == pytest.approx(0.5 / 5.0)
    assert f.cosine == pytest.approx((9 + 18) / (5 * np.hypot(3, 4.5)))


def test_fidelity_takes_the_worst_output_and_rejects_shape_mismatch():
    ref = {"a": np.ones(4), "b": np.ones(4)}
    f = fidelity({"a": np.ones(4), "b": np.full(4, 2.0)}, ref)
    assert f.rel_l2 == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        fidelity({"a": np.ones(3), "b": np.ones(4)}, ref)
    with pytest.raises(ValueError, match="missing"):
        fidelity({"a": np.ones(4)}, ref)


def test_non_finite_output_fails_every_gate():
    f = fidelity({"y": np.array([np.nan, 1.0])}, {"y": np.array([1.0, 1.0])})
    reasons = check(f, Tolerance(max_abs=1.0, rel_l2=1.0, min_cosine=0.0))
    assert len(reasons) == 3


def test_gate_names_each_violation():
    tol = Tolerance(max_abs=1e-3, rel_l2=1e-4, min_cosine=0.9999)
    assert check(Fidelity(0.0, 0.0, 1.0), tol) == []
    reasons = check(Fidelity(0.5, 1e-5, 1.0), tol)
    assert reasons == ["max_abs 0.5 > 0.001"]


def test_large_samples_use_the_order_statistic_interval_which_agrees_with_the_bootstrap():
    from chipbench.stats import BOOTSTRAP_MAX_N, order_statistic_median_ci

    x = np.random.default_rng(2).lognormal(0, 0.3, BOOTSTRAP_MAX_N)
    boot = bootstrap_median_ci(x, seed=0)
    exact = order_statistic_median_ci(x)
    assert exact[0] <= np.median(x) <= exact[1]
    assert exact == pytest.approx(boot, rel=0.01)
    big = np.concatenate([x, x])
    assert bootstrap_median_ci(big) == order_statistic_median_ci(big)
