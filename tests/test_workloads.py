"""Workload catalogue: registration, seeded inputs, ONNX export (legacy exporter, opset 17,
dynamic batch) matching torch through onnxruntime. Small variants keep this fast."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from chipbench.workloads.base import get_workload, workload_names

# name -> field overrides giving a small, fast variant (untrained: fidelity of the graph only)
SMALL = {
    "defect-cnn": dict(image_size=32, width=8, blocks=(1, 1, 1, 1)),
    "vibration-cnn1d": dict(window=512, width=8, train=False),
    "sensor-transformer": dict(steps=16, channels=8, d_model=32, layers=2, heads=4, train=False),
    "edge-inspect": dict(image_size=32, width_mult=0.25, last_channels=64, train=False),
    "defect-seg": dict(image_size=32, base=8, depth=2, train=False),
    "rul-gru": dict(hidden=16, train=False),
    "rul-tcn": dict(channels=16, levels=2, train=False),
    "sensor-ae": dict(steps=16, channels=8, hidden=8, latent=4, train=False),
    "doc-encoder": dict(seq=16, vocab=2000, d_model=64, layers=2, heads=4, ff=128),
    "factory-llm": dict(vocab=1000, d_model=64, layers=2, heads=4, kv_heads=2, ffn=128,
                        prompt_len=12, max_pos=64),
    "factory-llm-decode": dict(vocab=1000, d_model=64, layers=2, heads=4, kv_heads=2, ffn=128,
                               past_len=12, max_pos=64),
}


@pytest.fixture(autouse=True)
def _workload_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CHIPBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_catalogue_registered_and_described():
    names = workload_names()
    ours = [n for n in names if type(get_workload(n)).__module__.startswith("chipbench.workloads.")]
    assert set(ours) == set(SMALL), "every workload needs a small variant in SMALL"
    for n in names:
        w = get_workload(n)
        d = w.describe()
        assert d["scenario"] and type(w).__doc__
        assert w.input_names and w.output_names
        if w.task_metric is not None:
            assert isinstance(w.higher_is_better, bool)


def test_listing_imports_no_torch():
    code = ("import sys; from chipbench.workloads.base import workload_names, get_workload;"
            "[get_workload(n).describe() for n in workload_names()];"
            "assert 'torch' not in sys.modules, 'torch imported'")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_export_cache_key_imports_no_torch():
    """A cell on an ONNX backend finds its cached export without importing torch (1-2 s a cell),
    and the key names the torch version that made the export, as `torch.__version__` says it."""
    import torch

    from chipbench.prepare import export_key

    assert export_key(get_workload("sensor-ae"), 1)["torch"] == torch.__version__
    code = ("import sys; from chipbench.prepare import export_key; from chipbench.workloads.base import get_workload;"
            "export_key(get_workload('sensor-ae'), 1); assert 'torch' not in sys.modules, 'torch imported'")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_unknown_workload():
    with pytest.raises(KeyError, match="unknown workload"):
        get_workload("no-such-workload")


@pytest.mark.parametrize("name", list(SMALL))
def test_make_inputs_seeded(name):
    w = get_workload(name, **SMALL[name])
    a, b, c = w.make_inputs(3, 0), w.make_inputs(3, 0), w.make_inputs(3, 1)
    assert set(a) == set(w.input_names)
    for k in a:
        assert a[k].shape[0] == 3
        assert a[k].dtype in (np.float32, np.int64)
        np.testing.assert_array_equal(a[k], b[k])
        assert np.isfinite(a[k]).all() if a[k].dtype == np.float32 else True
    assert any(not np.array_equal(a[k], c[k]) for k in a)


DEFAULT_SHAPES = {  # the full-size workloads' input shapes at batch 2
    "defect-cnn": {"image": (2, 3, 224, 224)},
    "edge-inspect": {"image": (2, 3, 64, 64)},
    "defect-seg": {"image": (2, 3, 128, 128)},
    "vibration-cnn1d": {"signal": (2, 1, 2048)},
    "rul-gru": {"sensors": (2, 30, 16)},
    "rul-tcn": {"sensors": (2, 30, 16)},
    "sensor-ae": {"sensors": (2, 64, 32)},
    "sensor-transformer": {"sensors": (2, 128, 64)},
    "doc-encoder": {"input_ids": (2, 128), "attention_mask": (2, 128)},
    "factory-llm": {"input_ids": (2, 128)},
}


@pytest.mark.parametrize("name", list(DEFAULT_SHAPES))
def test_default_input_shapes(name):
    x = get_workload(name).make_inputs(2, 0)
    assert {k: v.shape for k, v in x.items()} == DEFAULT_SHAPES[name]


def export_onnx(w, model, inputs) -> bytes:
    import torch

    f = io.BytesIO()
    args = tuple(torch.from_numpy(inputs[n]) for n in w.input_names)
    torch.onnx.export(model, args, f, dynamo=False, opset_version=17,
                      input_names=list(w.input_names), output_names=list(w.output_names),
                      dynamic_axes=w.dynamic_axes())
    return f.getvalue()


def torch_outputs(w, model, inputs) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        out = model(*[torch.from_numpy(inputs[n]) for n in w.input_names])
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o.numpy() for o in out]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", list(SMALL))
def test_onnx_export_matches_torch(name):
    import onnxruntime as ort

    w = get_workload(name, **SMALL[name])
    model = w.build()
    assert not model.training
    onnx_bytes = export_onnx(w, model, w.make_inputs(2, 0))
    import onnx

    proto = onnx.load_from_string(onnx_bytes)
    onnx.checker.check_model(proto)  # as the harness does after export
    onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    x = w.make_inputs(3, 1)  # another batch size: the batch axis is dynamic
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == list(w.input_names)
    got = sess.run(list(w.output_names), x)
    ref = torch_outputs(w, model, x)
    assert len(got) == len(ref) == len(w.output_names)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        assert np.ptp(r, axis=0).max() > 1e-4 * np.abs(r).max(), "outputs ignore the input"
        rel = np.linalg.norm(g - r) / max(np.linalg.norm(r), 1e-12)
        assert rel < 1e-4, rel


def test_build_is_seeded():
    import torch

    w = get_workload("sensor-transformer", **SMALL["sensor-transformer"])
    a, b = w.build().state_dict(), w.build().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_llm_decode_continues_prefill():
    """The decode graph fed the prefill's KV cache gives the logits of a longer prefill."""
    import torch

    kw = SMALL["factory-llm"]
    pre = get_workload("factory-llm", **{**kw, "prompt_len": 9})
    dec = get_workload("factory-llm-decode", **{**kw, "past_len": 8})
    ids = pre.make_inputs(2, 0)["input_ids"]
    with torch.no_grad():
        full = pre.build()(torch.from_numpy(ids))
        short = get_workload("factory-llm", **{**kw, "prompt_len": 8}).build()(
            torch.from_numpy(ids[:, :8]))
        step = dec.build()(torch.from_numpy(ids[:, 8:]), torch.full((2,), 8), *short[1:])
    torch.testing.assert_close(step[0], full[0], rtol=1e-4, atol=1e-5)
    for a, b in zip(step[1:], full[1:]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    x = dec.make_inputs(2, 0)
    assert x["past.0.key"].shape == (2, kw["kv_heads"], 8, kw["d_model"] // kw["heads"])
    assert (x["position"] == 8).all()


def test_untrained_and_trained_keys_differ():
    a = get_workload("vibration-cnn1d").key()
    b = get_workload("vibration-cnn1d", train=False).key()
    assert a != b and a["name"] == "vibration-cnn1d"


def test_weight_cache_exact_key(monkeypatch):
    """Weights are fitted once per exact key (workload fields, recipe, data generator, torch)
    and reloaded after; a changed generator version refits."""
    import json

    import torch

    from chipbench.paths import cache_dir
    from chipbench.workloads import training

    w = get_workload("sensor-ae", steps=8, channels=4, hidden=4, latent=2)
    calls = []

    def fit(m):
        calls.append(1)
        with torch.no_grad():
            for p in m.parameters():
                p.fill_(0.5)
        return {"note": "constant"}

    a = training.cached_weights(w, "recipe-x", w._model(), fit)
    b = training.cached_weights(w, "recipe-x", w._model(), fit)
    assert len(calls) == 1 and not b.training
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    training.cached_weights(w, "recipe-y", w._model(), fit)
    assert len(calls) == 2
    info = training.train_info(w)
    assert info["note"] == "constant" and "train_cpu_s" in info
    assert training.data_key(w)["generator"].startswith("process-sensors")
    assert training.data_key(get_workload("doc-encoder")) is None

    # a stored key differing from ours (here: another data version) is not trusted
    for k in cache_dir("weights", w.name).glob("*.key.json"):
        d = json.loads(k.read_text())
        d["key"]["data"]["version"] = "0"
        k.write_text(json.dumps(d))
    training.cached_weights(w, "recipe-x", w._model(), fit)
    assert len(calls) == 3


# full-size trained models: minutes of CPU on first use (opt-in: pytest -m slow)
TRAINED_FLOOR = {
    "vibration-cnn1d": 0.90,  # accuracy (chance 0.25)
    "edge-inspect": 0.70,  # accuracy (chance 0.17)
    "defect-seg": 0.65,  # mean IoU
    "rul-gru": 20.0,  # RMSE ceiling, cycles (predicting the mean: ~43)
    "rul-tcn": 22.0,
    "sensor-ae": 0.90,  # AUROC
    "sensor-transformer": 0.80,  # accuracy (chance 0.2)
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TRAINED_FLOOR))
def test_trained_model_task_metric(name):
    from chipbench.workloads.training import evaluate, train_info

    w = get_workload(name)
    value = evaluate(w, w.build())
    assert train_info(w)["test_" + w.task_metric] == pytest.approx(value, rel=1e-5)
    if w.higher_is_better:
        assert value >= TRAINED_FLOOR[name]
    else:
        assert value <= TRAINED_FLOOR[name]


def test_shipped_weights_are_used_only_for_their_exact_key(tmp_path):
    import torch

    from chipbench.workloads.training import keyed_weights

    made = torch.nn.Linear(3, 2)
    key = {"workload": {"name": "w"}, "recipe": "r", "data": None, "torch": "2.13.0"}
    folder = tmp_path / "w"
    folder.mkdir()
    torch.save(made.state_dict(), folder / "k.pt")
    (folder / "k.key.json").write_text(json.dumps({"key": key, "info": {"train_s": 1.5}}))
    fresh = torch.nn.Linear(3, 2)
    info = keyed_weights(tmp_path, "w", key, fresh, exact=True)
    assert info == {"train_s": 1.5, "shipped": str(folder), "made_with_torch": "2.13.0"}
    assert torch.equal(fresh.weight, made.weight)
    other_torch = {**key, "torch": "2.99.0"}
    assert keyed_weights(tmp_path, "w", other_torch, torch.nn.Linear(3, 2), exact=True) is None
    assert keyed_weights(tmp_path, "w", other_torch, torch.nn.Linear(3, 2), exact=False)["carried"] == str(folder)
    assert keyed_weights(tmp_path, "w", {**key, "recipe": "other"}, torch.nn.Linear(3, 2), exact=True) is None
    assert keyed_weights(tmp_path, "w", key, torch.nn.Linear(4, 2), exact=True) is None  # shapes differ
