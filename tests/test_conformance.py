"""The conformance scoreboard: ONNX's own node tests on real backends and on test doubles."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from chipbench.backends.base import get_backend
from chipbench.conformance import document, scoreboard
from chipbench.conformance.cases import Case, CaseError, load_cases, select
from chipbench.conformance.compare import compare_outputs
from chipbench.conformance.fault import bisect
from chipbench.conformance.session import run_cases


def tvm_available() -> bool:
    return get_backend("tvm-llvm").available()[0]


@pytest.fixture(scope="module")
def node_cases():
    return load_cases("node")


def case(cases, name) -> Case:
    return next(c for c in cases if c.name == name)


def test_compare_applies_the_case_tolerance_and_matches_nan_by_position():
    expected = {"y": np.array([1.0, np.nan, np.inf, 100.0], np.float32)}
    close = {"y": np.array([1.0005, np.nan, np.inf, 100.05], np.float32)}  # within rtol 1e-3
    assert compare_outputs(close, expected, 1e-3, 1e-7).ok
    far = compare_outputs({"y": np.array([1.01, np.nan, np.inf, 100.0], np.float32)}, expected, 1e-3, 1e-7)
    assert not far.ok and far.max_abs == pytest.approx(0.01, rel=1e-3) and "max abs error" in far.summary()
    nan_lost = compare_outputs({"y": np.array([1.0, 0.0, np.inf, 100.0], np.float32)}, expected, 1e-3, 1e-7)
    assert not nan_lost.ok and "NaN/Inf" in nan_lost.summary()
    assert not compare_outputs({"y": expected["y"].astype(np.float64)}, expected, 1e-3, 1e-7).ok  # dtype, as ONNX's runner
    assert not compare_outputs({}, expected, 1e-3, 1e-7).ok


def test_cases_name_their_operator_and_an_unknown_operator_is_refused(node_cases):
    assert len(node_cases) > 1000
    relu = case(node_cases, "test_relu")
    assert relu.op == "Relu" and relu.model_path.is_file() and relu.datasets == 1
    expanded = [c for c in node_cases if c.name.startswith("test_softmax_axis_0_expanded")]
    assert expanded and expanded[0].op == "Softmax" and len(expanded[0].ops) > 1
    assert all(c.op == "Conv" for c in select(node_cases, ["conv"]))
    with pytest.raises(CaseError, match="NoSuchOp"):
        select(node_cases, ["NoSuchOp"])
    assert len(select(node_cases, sample=5, seed=1)) == 5
    assert select(node_cases, sample=5, seed=1) == select(node_cases, sample=5, seed=1)


def test_pass_wrong_and_a_crash_that_costs_one_case(node_cases):
    cases = [case(node_cases, "test_relu"), case(node_cases, "test_sigmoid")]
    results, info = run_cases(cases, ["ort-cpu", "skewed-double", "crash-double"], timeout_s=60)
    by = {(r["backend"], r["case"]): r for r in results}
    assert by[("ort-cpu", "test_relu")]["outcome"] == "PASS"
    wrong = by[("skewed-double", "test_sigmoid")]
    assert wrong["outcome"] == "WRONG" and wrong["max_rel"] == pytest.approx(0.01, rel=1e-3)
    assert wrong["node"] == {"index": 0, "name": "", "op": "Sigmoid"} and wrong["fault_by"] == "single node"
    for name in ("test_relu", "test_sigmoid"):  # the worker died on each; the next case got a new one
        crashed = by[("crash-double", name)]
        assert crashed["outcome"] == "CRASHED" and "SIGABRT" in crashed["detail"]
    assert info["crash-double"]["worker_starts"] == 2


def test_a_hanging_case_times_out_and_its_worker_is_killed(node_cases):
    results, _ = run_cases([case(node_cases, "test_relu")], ["hang-double"], timeout_s=3)
    assert results[0]["outcome"] == "TIMED OUT" and "killed" in results[0]["detail"]


@pytest.mark.skipif(not tvm_available(), reason="apache-tvm is not installed")
def test_tvm_refuses_runtime_axes_naming_the_node(node_cases):
    results, _ = run_cases([case(node_cases, "test_reduce_sum_keepdims_example")], ["tvm-llvm"], timeout_s=120)
    r = results[0]
    assert r["outcome"] == "UNSUPPORTED" and r["node"]["op"] == "ReduceSum"


def test_bisection_finds_the_first_node_that_fails():
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
             helper.make_node("Abs", ["b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.array([-1, 0, 1, 2], np.float32)

    def probe(prefix, names):  # a backend that computes Neg wrongly
        from onnx.reference import ReferenceEvaluator

        out = dict(zip(names, ReferenceEvaluator(prefix).run(names, {"x": x})))
        return {k: v + 1 if k == "b" else v for k, v in out.items()}

    node, how = bisect(model, {"x": x}, probe, lambda got, exp: compare_outputs(got, exp, 1e-3, 1e-7).ok)
    assert node == {"index": 1, "name": "", "op": "Neg"} and how == "bisection"


def bn_opset6_case(folder: Path) -> Case:
    """BatchNormalization at opset 6 (is_test=1, spatial=1), with numpy's expected output."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    scale, bias = rng.random(3).astype(np.float32) + 0.5, rng.standard_normal(3).astype(np.float32)
    mean, var = rng.standard_normal(3).astype(np.float32), rng.random(3).astype(np.float32) + 0.5
    eps = 1e-5
    shape = (1, 3, 1, 1)
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * scale.reshape(shape) + bias.reshape(shape)
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=eps, is_test=1)
    graph = helper.make_graph(
        [node], "bn6", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y.shape)],
        initializer=[numpy_helper.from_array(a, n) for a, n in ((scale, "s"), (bias, "b"), (mean, "m"), (var, "v"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)])
    data = folder / "test_data_set_0"
    data.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    (data / "input_0.pb").write_bytes(numpy_helper.from_array(x).SerializeToString())
    (data / "output_0.pb").write_bytes(numpy_helper.from_array(y.astype(np.float32)).SerializeToString())
    return Case("bn_opset6", "converted", "", ("BatchNormalization",), 6, 1e-3, 1e-5, str(folder), 1)


def test_an_opset_6_model_is_converted_and_says_so(tmp_path):
    results, _ = run_cases([bn_opset6_case(tmp_path / "bn6")], ["ort-cpu"], timeout_s=60)
    r = results[0]
    assert r["outcome"] == "PASS", r
    assert r["converted"].startswith("converted from opset 6 to ")


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "chipbench.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=os.environ.copy())


@pytest.mark.parametrize("args, names", [
    (["-b", "no-such-backend"], "-b no-such-backend"),
    (["--suite", "everything"], "--suite 'everything'"),
    (["--ops", "NoSuchOp"], "--ops"),
    (["-b", "torch-eager"], "-b torch-eager"),
])
def test_bad_flags_exit_2_with_one_line_before_anything_runs(tmp_path, args, names):
    proc = cli("conformance", *args, "--results-dir", tmp_path / "r")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and names in lines[0]
    assert not (tmp_path / "r" / "conformance").exists()


def test_cli_stores_a_document_and_the_report_shows_the_scoreboard(tmp_path):
    results = tmp_path / "results"
    proc = cli("conformance", "-b", "ort-cpu,skewed-double", "--ops", "Relu",
               "--results-dir", results, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    doc = out["document"]
    document.validate(doc)
    assert doc["kind"] == "conformance" and doc["backends"]["ort-cpu"]["versions"]["onnxruntime"]
    assert (results / "conformance" / f"{doc['id']}.json").is_file()
    board = scoreboard.build(document.documents(results))
    assert board.overall["node"]["ort-cpu"].passed == board.overall["node"]["ort-cpu"].counted >= 1
    assert board.wrong and all(w["backend"] == "skewed-double" for w in board.wrong)
    proc = cli("report", "--results-dir", results)
    assert proc.returncode == 0, proc.stderr
    html = (results / "report.html").read_text()
    assert 'id="conformance-op-Relu"' in html and "WRONG" in html
    assert "ONNX conformance" in (results / "report.md").read_text()


def test_run_model_lifts_an_opset_6_model_and_says_so(tmp_path):
    bn_opset6_case(tmp_path / "bn6")
    data = tmp_path / "bn6" / "test_data_set_0"
    results = tmp_path / "results"
    proc = cli("run", "--model", tmp_path / "bn6" / "model.onnx", "--input-data", data, "--expected", data,
               "-b", "ort-cpu", "--min-count", "5", "--min-duration", "0.05", "--results-dir", results, "--no-report")
    assert proc.returncode == 0, proc.stderr
    (record,) = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    assert record["status"] == "ok", record["reason"]
    assert any(n.startswith("converted from opset 6 to ") for n in record["notes"])
    assert not record["accuracy"]["failures"]
