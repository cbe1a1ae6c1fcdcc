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


FAST = dict(strategy="replay-trace", cost_model="random", trials_per_iter=4, builders=1, measure_s=0.05, log=lambda msg: None)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    from chipbench.backends.tvm import fuse, host_target, import_onnx
    from chipbench.tuning import extract, tune_onnx

    results = tmp_path_factory.mktemp("results")
    model = two_layer(results / "two.onnx")
    target = host_target()
    tasks = [t.task_name for t in extract(fuse(import_onnx(model)[0], target, True), target)]
    crashing = next(name for name in tasks if name.startswith("matmul"))  # the bare second MatMul
    # That task aborts its worker while MetaSchedule initialises it.
    first = tune_onnx(model, 4, results, crash_tasks=[crashing], **FAST)
    first_meta = json.loads((first.folder / "meta.json").read_text())
    second = tune_onnx(model, 8, results, retry_failed=True, **FAST)
    return model, results, first, first_meta, second


def test_a_crashing_task_is_recorded_and_the_rest_goes_on(tuned):
    _, _, first, first_meta, _ = tuned
    (crashed,) = first.failed_tasks
    assert crashed.startswith("matmul") and "SIGABRT" in first.failed_tasks[crashed]["reason"]
    assert first_meta["failed_tasks"][crashed]["round"] == 1
    assert first.trials >= 4  # the other task got the round's trials
    assert first.coverage["tasks_found"] == 2
    assert first.coverage["tasks_with_record"] == 1 and first.coverage["tasks_without_record"] == [crashed]


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
    assert key == second.key and set(key) == {"format", "graph_sha256", "target", "weight_prepack"}
    assert key["weight_prepack"] is True
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
    assert compiled.tuning_db and "metaschedule" in compiled.pipeline and "weight prepack" in compiled.pipeline
    # the coverage check (every task extracted) is kept with the build: a second cell reads it
    again = get_backend("tvm-llvm-tuned").compile(source, CompileSpec(tuning_db=results / "tuning"))
    assert again.details["coverage_cached"]
    assert {k: again.details[k] for k in ("tasks_found", "tasks_applied", "tasks_without_record")} == \
        {k: d[k] for k in ("tasks_found", "tasks_applied", "tasks_without_record")}


def test_a_database_tuned_without_weight_prepacking_builds_without_it(tuned, tmp_path):
    from chipbench.tuning import onnx_inputs, tune_onnx

    model, _, _, _, second = tuned
    plain = tune_onnx(model, 2, tmp_path, weight_prepack=False, **FAST)
    assert plain.folder != second.folder and plain.key["weight_prepack"] is False
    # Databases from before prepacking (key format 2) are still found and built the same way.
    legacy = {k: v for k, v in plain.key.items() if k != "weight_prepack"} | {"format": 2}
    (plain.folder / "key.json").write_text(json.dumps(legacy))
    compiled = get_backend("tvm-llvm-tuned").compile(ModelSource("two", model, ("x",), ("y",)),
                                                     CompileSpec(tuning_db=tmp_path / "tuning"))
    x = onnx_inputs(model)["x"]
    np.testing.assert_allclose(compiled.run({"x": x})["y"], reference(model, x), rtol=1e-4, atol=1e-4)
    assert "metaschedule" in compiled.pipeline and "prepack" not in compiled.pipeline
    assert compiled.details["tasks_applied"] >= 1


def test_lookup_is_exact_on_target_and_model(tuned, tmp_path):
    from chipbench import tuning

    model, results, _, _, second = tuned
    backend = get_backend("tvm-llvm-tuned")
    source = ModelSource("two", model, ("x",), ("y",))
    # another target, transfer forbidden: not found in the root, refused when the folder is named
    # outright (tests/test_tuning_transfer.py: what happens when transfer is allowed)
    exact = {"no_transfer": True}
    with pytest.raises(Unsupported, match="no tuning database"):
        backend.compile(source, CompileSpec(tuning_db=results / "tuning", target=OTHER_TARGET, options=exact))
    with pytest.raises(Unsupported, match="was made for"):
        backend.compile(source, CompileSpec(tuning_db=second.folder, target=OTHER_TARGET, options=exact))
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


def test_cost_model_choice(monkeypatch):
    from chipbench import tuning

    installed = importlib.util.find_spec("xgboost") is not None
    assert tuning.resolve_cost_model("auto") == ("xgb" if installed else "random")
    assert tuning.resolve_cost_model("random") == "random"
    with pytest.raises(tuning.TuningError, match="unknown cost model 'gbm'"):
        tuning.resolve_cost_model("gbm")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert tuning.resolve_cost_model("auto") == "random"
    with pytest.raises(tuning.TuningError, match=r"needs xgboost: pip install -e '.\[tune\]'"):
        tuning.resolve_cost_model("xgb")


def test_report_shows_what_tuning_bought(tuned, tmp_path):
    from test_cli import cli, records

    model, results, _, _, second = tuned
    res = tmp_path / "res"
    cli("run", "--model", model, "-b", "ort-cpu,tvm-llvm,tvm-llvm-tuned", "--tuning-db", results / "tuning",
        "--min-duration", "0.05", "--min-count", "5", "--results-dir", res)
    pipelines = {r["backend"]["name"]: r["backend"]["pipeline"] for r in records(res)}
    assert pipelines["tvm-llvm"].endswith("(untuned)")  # --tuning-db is for tvm-llvm-tuned only
    assert "weight prepack" in pipelines["tvm-llvm-tuned"]
    cli("report", "--results-dir", res)
    report = (res / "report.md").read_text()
    section = report.split("## TVM tuning: what it buys and what it costs", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in section.splitlines() if line.startswith("| two |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "tuned here" and cells[4] == str(second.trials) and cells[6] == "random / replay-trace"
    assert all(c not in ("", "–") for c in cells[7:10])  # untuned, tuned and ORT, all from this run
    assert cells[12] in ("yes", "no") and (cells[13] == "never" or cells[13].replace(",", "").isdigit())
    assert "![tuning curves](tuning-curves.png)" in section and (res / "tuning-curves.png").stat().st_size > 0
    assert "TVM tuning: what it buys" in (res / "report.html").read_text()


def test_shipped_databases_are_where_the_lookup_searches():
    from chipbench import tuning

    shipped = tuning.shipped_root()
    assert shipped == Path(__file__).resolve().parents[1] / "results" / "tuned"
    assert shipped in tuning.search_roots()
    folders = tuning.candidate_folders([shipped], tuning.canonical_target('{"kind": "llvm", "mcpu": "znver4", "num-cores": 2}'))
    assert folders and all(tuning.read_key(f) for f in folders)


@pytest.mark.skipif(importlib.util.find_spec("xgboost") is None, reason="xgboost not installed (the tune extra)")
def test_the_xgboost_cost_model_learns_across_rounds(tmp_path):
    from tvm.s_tir import meta_schedule as ms

    from chipbench.tuning import tune_onnx

    model = two_layer(tmp_path / "two.onnx")
    settings = {**FAST, "cost_model": "xgb"}
    first = tune_onnx(model, 4, tmp_path, **settings)
    learned = first.folder / "work" / "cost_model.tar"
    xgb = ms.cost_model.XGBModel()
    xgb.load(str(learned))
    seen = xgb.data_size
    assert seen >= 4
    second = tune_onnx(model, 8, tmp_path, **settings)  # a new round: its worker starts from what the first learned
    xgb.load(str(learned))
    assert xgb.data_size >= seen + (second.trials - first.trials)
