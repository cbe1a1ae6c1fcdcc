"""Data generators, split cache and task metrics: deterministic, exact-keyed, learnable,
metrics against hand-computed cases. Small sizes keep this fast (no full model training)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage, signal

from chipbench.workloads import metrics
from chipbench.workloads.base import get_workload, workload_names
from chipbench.workloads.data import degradation, process, surface, text, vibration
from chipbench.workloads.data.cache import generate_split


@pytest.fixture(autouse=True)
def _data_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CHIPBENCH_CACHE", str(tmp_path / "cache"))


def rng(seed):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- metrics, by hand


def test_accuracy_by_hand():
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.3, 0.2], [0.0, 5.0]])
    assert metrics.accuracy(logits, np.array([1, 0, 1, 1])) == 0.75
    assert metrics.accuracy(logits, np.array([0, 1, 1, 0])) == 0.0


def test_mean_iou_by_hand():
    truth = np.array([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    # class 0: inter 1, union 3 -> 1/3; class 1: inter 2, union 3 -> 2/3; class 2: 1/2
    assert metrics.mean_iou(pred, truth, 4) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert metrics.mean_iou(truth, truth, 3) == 1.0  # class 3 absent from both: left out


def test_rmse_by_hand():
    assert metrics.rmse(np.array([[1.0], [2.0], [3.0]]), np.array([1.0, 4.0, 0.0])) == \
        pytest.approx(np.sqrt((0 + 4 + 9) / 3))


def test_auroc_by_hand():
    # positives 0.8, 0.4; negatives 0.5, 0.1: pairs (0.8>0.5, 0.8>0.1, 0.4<0.5, 0.4>0.1) = 3/4
    assert metrics.auroc(np.array([0.8, 0.5, 0.4, 0.1]), np.array([1, 0, 1, 0])) == 0.75
    assert metrics.auroc(np.array([1.0, 1.0]), np.array([1, 0])) == 0.5  # tie counts half
    assert metrics.auroc(np.array([0.2, 0.9, 0.3]), np.array([0, 1, 0])) == 1.0
    with pytest.raises(ValueError):
        metrics.auroc(np.array([0.1, 0.2]), np.array([1, 1]))


# ---------------------------------------------------------------- generators: determinism

GENERATORS = {
    "vibration": lambda r: vibration.generate(r, 8, 512),
    "surface": lambda r: surface.generate(r, 6, 48),
    "process-states": lambda r: process.states(r, 8, 32, 16, seed=0),
    "process-anomalies": lambda r: process.anomalies(r, 8, 32, 16, seed=0, rate=0.5),
    "degradation": lambda r: degradation.generate(r, 8, 30, 14, seed=0),
    "text": lambda r: text.token_ids(r, 4, 32, 30522, bert=True),
}


@pytest.mark.parametrize("name", list(GENERATORS))
def test_generator_deterministic(name):
    a, b, c = (GENERATORS[name](rng(s)) for s in (3, 3, 4))
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert any(not np.array_equal(u, w) for u, w in zip(a, c))
    for u in a:
        assert np.isfinite(u).all()


def test_vibration_physics():
    orders = vibration.fault_orders()  # SKF 6205: BPFO 3.585x, BPFI 5.415x, BSF 2.357x shaft
    assert orders["bpfo"] == pytest.approx(3.5848, abs=1e-3)
    assert orders["bpfi"] == pytest.approx(5.4152, abs=1e-3)
    assert orders["bsf"] == pytest.approx(2.3567, abs=1e-3)
    x, y = vibration.generate(rng(0), 4, 2048, classes=np.array([0, 1, 2, 3]))
    assert x.shape == (4, 1, 2048) and x.dtype == np.float32 and list(y) == [0, 1, 2, 3]
    kurt = ((x - x.mean(-1, keepdims=True)) ** 4).mean(-1) / x.var(-1) ** 2
    assert kurt[0, 0] < 4 < kurt[1:, 0].min()  # impacts make faulty signals impulsive


def test_surface_masks_match_labels():
    x, y, m = surface.generate(rng(0), 24, 48)
    assert x.shape == (24, 3, 48, 48) and m.shape == (24, 48, 48)
    assert x.dtype == np.float32 and m.dtype == np.int64 and 0 <= x.min() and x.max() <= 1
    for i in range(24):
        vals = set(np.unique(m[i])) - {0}
        assert vals == (set() if y[i] == 0 else {y[i]})


def test_process_plant_shared_across_splits():
    w1, n1 = process.plant(0, 16, 6)
    w2, _ = process.plant(0, 16, 6)
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_allclose((w1**2).sum(1) + n1**2, 1.0)  # unit-variance sensors


def test_degradation_labels_capped_piecewise_linear():
    x, y = degradation.generate(rng(0), 300)
    assert x.shape == (300, 30, degradation.OP_SETTINGS + 14)
    assert y.min() >= 0 and y.max() == pytest.approx(degradation.RUL_CAP)
    assert 0.1 < (y == degradation.RUL_CAP).mean() < 0.9


def test_text_ids_in_range_with_padding():
    ids, mask = text.token_ids(rng(0), 16, 64, 30522, bert=True)
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 30522
    assert (ids[:, 0] == text.CLS).all() and (ids[mask == 0] == text.PAD).all()
    assert ((mask[:, :-1] >= mask[:, 1:])).all()  # ones then zeros


# ---------------------------------------------------------------- labels learnable


def _ridge_accuracy(ftr, ytr, fte, yte, k, lam=1e-2):
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-9
    a = np.c_[(ftr - mu) / sd, np.ones(len(ftr))]
    b = np.c_[(fte - mu) / sd, np.ones(len(fte))]
    w = np.linalg.solve(a.T @ a + lam * len(a) * np.eye(a.shape[1]), a.T @ np.eye(k)[ytr])
    return float(((b @ w).argmax(1) == yte).mean())


def test_vibration_learnable():
    def feat(x):
        x = x[:, 0]
        spec = np.abs(np.fft.rfft(x, axis=1)) ** 2
        bands = np.log(spec[:, 1:].reshape(len(x), 64, -1).sum(2) + 1e-9)
        env = np.abs(signal.hilbert(x, axis=1))  # envelope spectrum: the classic diagnosis
        es = np.abs(np.fft.rfft(env - env.mean(1, keepdims=True), axis=1))[:, 1:120]
        return np.c_[bands, es / es.sum(1, keepdims=True)]

    x, y = vibration.generate(rng(1), 400)
    xt, yt = vibration.generate(rng(2), 200)
    assert _ridge_accuracy(feat(x), y, feat(xt), yt, 4) > 0.6  # chance 0.25


def test_surface_learnable():
    def feat(x):
        g = x.mean(1)
        hp = g - ndimage.uniform_filter(g, (1, 9, 9))
        gx, gy = np.gradient(g, axis=(1, 2))
        f = [np.percentile(a.reshape(len(a), -1), [0.1, 1, 5, 50, 95, 99, 99.9], axis=1).T
             for a in (hp, np.hypot(gx, gy), np.abs(gx) - np.abs(gy))]
        blue = (x[:, 2] / (x[:, 0] + 1e-3)).reshape(len(x), -1)
        return np.concatenate([*f, np.percentile(blue, [1, 5, 50], axis=1).T], 1)

    x, y, _ = surface.generate(rng(1), 360, 48)
    xt, yt, _ = surface.generate(rng(2), 180, 48)
    assert _ridge_accuracy(feat(x), y, feat(xt), yt, 6) > 0.5  # chance 1/6


def test_process_states_learnable():
    def feat(x):
        d = np.diff(x, axis=1)
        ac = (d[:, 1:] * d[:, :-1]).mean(1) / (d.var(1) + 1e-9)
        t = np.linspace(-1, 1, x.shape[1])
        slope = np.abs((x * t[None, :, None]).mean(1))
        spec = np.abs(np.fft.rfft(x - x.mean(1, keepdims=True), axis=1)).mean(2)
        return np.c_[np.sort(x.std(1), 1), np.sort(ac, 1), np.sort(slope, 1), np.log(spec[:, 1:])]

    x, y = process.states(rng(1), 600, 64, 16, 0)
    xt, yt = process.states(rng(2), 300, 64, 16, 0)
    assert _ridge_accuracy(feat(x), y, feat(xt), yt, 5) > 0.6  # chance 0.2


def test_degradation_learnable():
    x, y = degradation.generate(rng(1), 800)
    xt, yt = degradation.generate(rng(2), 400)

    def feat(x):
        return np.c_[x[:, -5:].mean(1), x.mean(1), np.ones(len(x))]

    w = np.linalg.lstsq(feat(x), y, rcond=None)[0]
    assert metrics.rmse(feat(xt) @ w, yt) < 0.7 * yt.std()  # well below predicting the mean


def test_anomalies_detectable():
    x, y = process.anomalies(rng(1), 400, 32, 16, seed=0, rate=0.5)
    w, _ = process.plant(0, 16, 6)
    resid = x @ (np.eye(16) - w @ np.linalg.pinv(w)).T  # off the plant's factor subspace
    assert metrics.auroc((resid**2).max(1).mean(1), y) > 0.9


# ---------------------------------------------------------------- split cache and the API


def test_split_cache_exact_key_prefix_and_tamper(tmp_path):
    calls = []

    def block(r, n, split):
        calls.append(n)
        return {"x": r.normal(size=(n, 3)).astype(np.float32)}, r.integers(0, 2, n)

    a = generate_split("toy", "1", {"p": 1}, 0, "train", 100, block)
    n_calls = len(calls)
    b = generate_split("toy", "1", {"p": 1}, 0, "train", 100, block)
    assert len(calls) == n_calls  # served from the cache
    np.testing.assert_array_equal(a.inputs["x"], b.inputs["x"])
    small = generate_split("toy", "1", {"p": 1}, 0, "train", 30, block)
    np.testing.assert_array_equal(small.inputs["x"], a.inputs["x"][:30])  # prefix property
    test = generate_split("toy", "1", {"p": 1}, 0, "test", 30, block)
    assert not np.array_equal(test.inputs["x"], small.inputs["x"])  # splits differ
    other = generate_split("toy", "1", {"p": 2}, 0, "train", 30, block)
    assert len(calls) > n_calls  # different parameters, different entry

    # a stored key that differs (even though the file name matches) is not trusted
    from chipbench.paths import cache_dir

    keys = sorted(cache_dir("data", "toy").glob("*.key.json"))
    assert keys and all(json.loads(k.read_text())["generator"] == "toy" for k in keys)
    for k in keys:
        d = json.loads(k.read_text())
        d["version"] = "tampered"
        k.write_text(json.dumps(d))
    n_calls = len(calls)
    c = generate_split("toy", "1", {"p": 1}, 0, "train", 100, block)
    assert len(calls) > n_calls
    np.testing.assert_array_equal(c.inputs["x"], a.inputs["x"])
    with pytest.raises(ValueError):
        generate_split("toy", "1", {}, 0, "validation", 10, block)
    del other


SMALL_DATA = {
    "edge-inspect": dict(image_size=32),
    "defect-cnn": dict(image_size=32),
    "defect-seg": dict(image_size=32),
    "vibration-cnn1d": dict(window=256),
    "rul-gru": dict(),
    "rul-tcn": dict(),
    "sensor-ae": dict(steps=16, channels=8),
    "sensor-transformer": dict(steps=16, channels=8),
}


def test_every_task_workload_has_data_and_metric():
    for name in workload_names():
        w = get_workload(name)
        if not type(w).__module__.startswith("chipbench.workloads."):
            continue  # registered by a test double or plugin
        if w.task_metric is not None:
            assert name in SMALL_DATA, f"{name}: add a small data variant to this test"


@pytest.mark.parametrize("name", list(SMALL_DATA))
def test_dataset_api(name):
    w = get_workload(name, **SMALL_DATA[name])
    x, y = w.dataset("test", 12)
    assert set(x) == set(w.input_names) and len(y) == 12
    for k, v in x.items():
        assert v.shape[0] == 12 and v.dtype in (np.float32, np.int64)
        assert v.shape[1:] == w.make_inputs(1, 0)[k].shape[1:]
    x2, y2 = w.dataset("test", 12)
    np.testing.assert_array_equal(y, y2)
    if w.task_metric is None:
        return
    assert isinstance(w.higher_is_better, bool)


def _perfect_outputs(w, y):
    """Outputs a perfect model would give, for the metric's best value."""
    if w.task_metric == "accuracy":
        return {"logits": np.eye(int(y.max()) + 1, dtype=np.float32)[y]}, 1.0
    if w.task_metric == "mean_iou":
        return {"logits": np.moveaxis(np.eye(6, dtype=np.float32)[y], -1, 1)}, 1.0
    if w.task_metric == "rmse":
        return {"rul": y[:, None].astype(np.float32)}, 0.0
    if w.task_metric == "auroc":
        return {"reconstruction": None, "score": y.astype(np.float32)}, 1.0
    raise AssertionError(w.task_metric)


@pytest.mark.parametrize("name", [n for n in SMALL_DATA if n != "defect-cnn"])
def test_metric_best_and_chance(name):
    w = get_workload(name, **SMALL_DATA[name])
    _, y = w.dataset("test", 48)
    out, best = _perfect_outputs(w, y)
    assert w.metric(out, y) == pytest.approx(best)
    if w.task_metric == "rmse":
        assert w.metric({"rul": np.zeros((len(y), 1), np.float32)}, y) > 10
