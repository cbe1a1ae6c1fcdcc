import numpy as np
import pytest

from chipbench.accuracy import Fidelity, Tolerance, check, fidelity
from chipbench.stats import LatencyStats, bootstrap_median_ci


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


def test_fidelity_takes_the_worst_output_and_an_uncomparable_output_is_never_valid():
    ref = {"a": np.ones(4), "b": np.ones(4)}
    f = fidelity({"a": np.ones(4), "b": np.full(4, 2.0)}, ref)
    assert f.rel_l2 == pytest.approx(1.0) and f.outputs_compared == 2
    loose = Tolerance(max_abs=1e9, rel_l2=1e9, min_cosine=-1.0)
    shape = fidelity({"a": np.ones(3), "b": np.ones(4)}, ref)
    assert shape.outputs_compared == 1 and any("shape (3,)" in r for r in check(shape, loose))
    missing = fidelity({"a": np.ones(4)}, ref)
    assert any("'b' missing" in r for r in check(missing, loose))


def test_a_finite_value_where_the_reference_has_nan_fails_every_tolerance():
    f = fidelity({"y": np.array([np.nan, 1.0])}, {"y": np.array([1.0, 1.0])})
    assert f.nonfinite_mismatch == 1 and f.nonfinite == 0
    assert check(f, Tolerance(max_abs=1e9, rel_l2=1e9, min_cosine=-1.0)) != []
    g = fidelity({"y": np.array([0.0, 1.0])}, {"y": np.array([np.nan, 1.0])})  # NaN replaced by 0
    assert g.nonfinite_mismatch == 1 and g.nonfinite == 1
    assert check(g, Tolerance(max_abs=1e9, rel_l2=1e9, min_cosine=-1.0)) != []


def test_reproducing_the_references_nan_and_inf_is_exact():
    ref = np.array([np.nan, np.inf, -np.inf, 2.0, 3.0])
    f = fidelity({"y": ref.copy()}, {"y": ref})
    assert (f.max_abs, f.rel_l2, f.cosine, f.nonfinite, f.nonfinite_mismatch) == (0.0, 0.0, 1.0, 3, 0)
    assert check(f, Tolerance(max_abs=0.0, rel_l2=0.0, min_cosine=1.0)) == []
    flipped = fidelity({"y": np.array([np.nan, -np.inf, -np.inf, 2.0, 3.0])}, {"y": ref})
    assert flipped.nonfinite_mismatch == 1  # -Inf is not +Inf


def test_one_nan_does_not_hide_the_other_errors():
    ref = np.arange(8, dtype=np.float32) + 1
    expected = ref + 1000
    expected[0] = np.nan
    f = fidelity({"y": ref}, {"y": expected})
    assert f.max_abs == pytest.approx(1000.0) and f.nonfinite_mismatch == 1
    reasons = check(f, Tolerance(max_abs=5e-3, rel_l2=1e-3, min_cosine=0.99999))
    assert any(r.startswith("max_abs 1e+03") for r in reasons)


def test_zero_dimensional_and_integer_outputs_compare():
    assert fidelity({"s": np.float32(2.0)}, {"s": np.float32(2.0)}).outputs_compared == 1
    f = fidelity({"i": np.array([1, 2, 3], np.int64)}, {"i": np.array([1, 2, 4], np.int64)})
    assert f.max_abs == 1.0


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
