"""MetaSchedule tuning: exactly keyed, resumable databases; crash isolation; the tuned backend.

One small two-task model (MatMul+Add+ReLU, then MatMul) is tuned twice: first with a crash
injected into one task (it must be recorded and the other tuned), then resumed with the failed
task retried, after which every extracted task must have a record that the build applies.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from chipbench.backends.base import CompileSpec, ModelSource, Unsupported, get_backend

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tvm") is None, reason="apache-tvm not installed")

OTHER_TARGET = '{"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2}'


def two_layer(path: Path, seed: int = 0, hidden: int = 64) -> Path:
    """y = relu(x @ W1 + b1) @ W2: two MetaSchedule tasks after fusion."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("W1", (32, hidden)), ("b1", (hidden,)), ("W2", (hidden, 16)))]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["a"]), helper.make_node("Add", ["a", "b1"], ["z"]),
             helper.make_node("Relu", ["z"], ["r"]), helper.make_node("MatMul", ["r", "W2"], ["y"])]
    graph = helper.make_graph(nodes, "two_layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def reference(path: Path, x: np.ndarray) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    w = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    return np.maximum(x @ w["W1"] + w["b1"], 0) @ w["W2"]


FAST = dict(strategy="replay-trace", trials_per_iter=4, builders=1, measure_s=0.05, log=lambda msg: None)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    from chipbench.tuning import tune_onnx

    results = tmp_path_factory.mktemp("results")
    model = two_layer(results / "two.onnx")
    # The task "matmul1" aborts its worker while MetaSchedule initialises it.
    first = tune_onnx(model, 4, results, crash_tasks=["matmul1"], **FAST)
    first_meta = json.loads((first.folder / "meta.json").read_text())
    second = tune_onnx(model, 8, results, retry_failed=True, **FAST)
    return model, results, first, first_meta, second


def test_a_crashing_task_is_recorded_and_the_rest_goes_on(tuned):
    _, _, first, first_meta, _ = tuned
    assert set(first.failed_tasks) == {"matmul1"}
    assert "SIGABRT" in first.failed_tasks["matmul1"]["reason"]
    assert first_meta["failed_tasks"]["matmul1"]["round"] == 1
    assert first.trials >= 4  # the other task got the round's trials
    assert first.coverage["tasks_found"] == 2
    assert first.coverage["tasks_with_record"] == 1 and first.coverage["tasks_without_record"] == ["matmul1"]


def test_resumed_tuning_gives_every_task_a_record(tuned):
    _, results, first, _, second = tuned
    assert second.folder == first.folder  # same key, same database: resumed, not restarted
    assert second.failed_tasks == {}
    assert second.trials >= 8
    cov = second.coverage
    assert cov["tasks_found"] == cov["tasks_with_record"] == cov["tasks_applied"] == 2
    # the curve: round 0 is untuned, then one point per round with growing trials and seconds
    curve = json.loads((second.folder / "curve.json").read_text())
    assert curve[0]["untuned"] and curve[0]["trials"] == 0
    assert [p["trials"] for p in curve[1:]] == sorted(p["trials"] for p in curve[1:]) and curve[-1]["trials"] >= 8
    assert curve[-1]["tuning_s"] >= curve[1]["tuning_s"] > 0
    assert all(p["latency_ms"] > 0 for p in curve)
    assert curve[-1]["rel_l2_vs_ort"] < 1e-4
    meta = json.loads((second.folder / "meta.json").read_text())
    assert meta["trials"] == second.trials and meta["tuning_s"] == pytest.approx(second.tuning_s)
    assert second.break_even is not None and second.break_even["tuned_ms"] == curve[-1]["latency_ms"]
    # a folder per (graph, target) under RESULTS_DIR/tuning/<target-slug>/, the full key beside the records
    key = json.loads((second.folder / "key.json").read_text())
    assert key == second.key and set(key) == {"format", "graph_sha256", "target"}
    assert second.folder.parent.parent == results / "tuning" and second.folder.parent.name.startswith("llvm-")
    assert meta["model"]["onnx_sha256"] == second.model["onnx_sha256"] and meta["onnx_sha256_seen"]


def test_tuned_backend_compiles_with_the_database_and_matches_the_reference(tuned):
    from chipbench.tuning import onnx_inputs

    model, results, _, _, second = tuned
    source = ModelSource("two", model, ("x",), ("y",))
    compiled = get_backend("tvm-llvm-tuned").compile(source, CompileSpec(tuning_db=results / "tuning"))
    x = onnx_inputs(model)["x"]
    np.testing.assert_allclose(compiled.run({"x": x})["y"], reference(model, x), rtol=1e-4, atol=1e-4)
    d = compiled.details
    assert d["tuning_db_path"] == str(second.folder)
    assert d["trials"] == d["records"] == second.trials and d["tuning_s"] == pytest.approx(second.tuning_s)
    assert d["tasks_found"] == d["tasks_with_record"] == d["tasks_applied"] == 2
    assert compiled.tuning_db and "metaschedule" in compiled.pipeline


def test_lookup_is_exact_on_target_and_model(tuned, tmp_path):
    from chipbench import tuning

    model, results, _, _, second = tuned
    backend = get_backend("tvm-llvm-tuned")
    source = ModelSource("two", model, ("x",), ("y",))
    # another target: not found in the root, refused when the folder is named outright
    with pytest.raises(Unsupported, match="no tuning database"):
        backend.compile(source, CompileSpec(tuning_db=results / "tuning", target=OTHER_TARGET))
    with pytest.raises(Unsupported, match="was made for"):
        backend.compile(source, CompileSpec(tuning_db=second.folder, target=OTHER_TARGET))
    # another graph (another hidden size) finds nothing; the same graph with other weights
    # (retrained) keeps its database: schedules do not depend on weight values
    other = two_layer(tmp_path / "other.onnx", hidden=48)
    with pytest.raises(Unsupported, match="no tuning database"):
        backend.compile(ModelSource("other", other, ("x",), ("y",)), CompileSpec(tuning_db=results / "tuning"))
    retrained = two_layer(tmp_path / "retrained.onnx", seed=1)
    assert tuning.graph_sha256(retrained) == second.key["graph_sha256"]
    assert retrained.read_bytes() != model.read_bytes()
    compiled = backend.compile(ModelSource("retrained", retrained, ("x",), ("y",)),
                               CompileSpec(tuning_db=results / "tuning"))
    assert compiled.details["tuning_db_path"] == str(second.folder) and compiled.details["tasks_applied"] == 2
    x = tuning.onnx_inputs(retrained)["x"]
    np.testing.assert_allclose(compiled.run({"x": x})["y"], reference(retrained, x), rtol=1e-4, atol=1e-4)
    # the key is compared, not the folder name: a copy whose key.json names another target is skipped
    sha, target = second.key["graph_sha256"], second.key["target"]
    copy = tmp_path / "root" / second.folder.parent.name / second.folder.name
    shutil.copytree(second.folder, copy, ignore=shutil.ignore_patterns("work", ".lock"))
    assert tuning.find_database(sha, target, [tmp_path / "root"]) == copy
    key = json.loads((copy / "key.json").read_text())
    (copy / "key.json").write_text(json.dumps({**key, "target": tuning.canonical_target(OTHER_TARGET)}))
    assert tuning.find_database(sha, target, [tmp_path / "root"]) is None


def test_shipped_database_is_pruned_to_the_best_record_per_task_and_still_applies(tuned, tmp_path):
    from chipbench import tuning

    model, _, _, _, second = tuned
    dest = tuning.ship(second.folder, tmp_path / "tuned")
    assert sorted(p.name for p in dest.iterdir()) == sorted(tuning.SHIPPED_FILES)
    assert dest.parent.name == second.folder.parent.name and dest.name == second.folder.name
    assert tuning.record_count(dest) == 2 < second.trials
    assert tuning.find_database(second.key["graph_sha256"], second.key["target"], [tmp_path / "tuned"]) == dest
    compiled = get_backend("tvm-llvm-tuned").compile(ModelSource("two", model, ("x",), ("y",)),
                                                     CompileSpec(tuning_db=tmp_path / "tuned"))
    d = compiled.details
    assert d["tuning_db_path"] == str(dest) and d["records"] == 2 and d["trials"] == second.trials
    assert d["tasks_found"] == d["tasks_applied"] == 2


def test_break_even_and_target_slug():
    from chipbench.tuning import break_even, target_slug

    b = break_even(untuned_ms=10.0, tuned_ms=2.0, tuning_s=80.0, ort_ms=1.0)
    assert b["inferences"] == 10_000 and b["speedup"] == 5.0 and b["vs_ort"] == 2.0
    assert break_even(untuned_ms=1.0, tuned_ms=2.0, tuning_s=5.0)["inferences"] is None
    assert target_slug('{"kind":"llvm","tag":"","keys":["cpu"],"num-cores":2,"mcpu":"znver4"}') == "llvm-znver4-2c"
    a = target_slug('{"kind":"llvm","keys":["cpu"],"num-cores":2,"mcpu":"znver4","mattr":["+avx2"]}')
    assert a.startswith("llvm-znver4-2c-") and len(a) > len("llvm-znver4-2c-")
