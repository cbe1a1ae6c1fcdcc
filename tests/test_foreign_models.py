"""Foreign ONNX models that chipbench once got wrong, one regression test per kind of fault.

Each test builds its own small model (as exporters in the wild write them) and asserts the
right behaviour: NaN/Inf-aware fidelity, the batch that ran, names with colons, operators named
in failures, input data checked against the graph, external data, fp16 graphs, non-tensor
outputs, shape inputs, throughput from the batch, and bad settings refused up front.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from test_bad_inputs import FAST, _hinted_input, assert_bad_input, cli, describe, records

NOTHING_STORED = {"runs": None, "rows": None}  # the snapshot of a results dir no run has made

TIMEOUT = ["--timeout", "300"]


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _save(path: Path, nodes, inputs, outputs, initializer=(), opset=17, ir_version=8, **kw) -> Path:
    graph = helper.make_graph(nodes, path.parent.name or "g", inputs, outputs, initializer=list(initializer))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **kw)
    model.ir_version = ir_version
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def run_ok(*args) -> tuple[object, dict[str, dict]]:
    """Run to completion (exit 0); the records by backend name."""
    results = Path(args[args.index("--results-dir") + 1])
    proc = cli("run", *args)
    assert proc.returncode == 0, describe(proc, results, {"runs": {}})
    recs = records(results)
    assert "Traceback" not in proc.stderr, describe(proc, results, {"runs": {}})
    return proc, {r["backend"]["name"]: r for r in recs}


def assert_refused(proc, results: Path, *needles: str) -> str:
    """Exit 2, one `error:` line holding every needle, no traceback, no record written."""
    return assert_bad_input(proc, results, NOTHING_STORED, *needles)


# --- 01: NaN in the reference, reproduced exactly by both backends ----------------------------

@pytest.fixture(scope="module")
def log_model(tmp_path_factory) -> Path:
    """y = log(x) on standard-normal x: about half the outputs are NaN."""
    path = tmp_path_factory.mktemp("f01") / "log_nan.onnx"
    return _save(path, [helper.make_node("Log", ["x"], ["y"])], [_vi("x", [1, 64])], [_vi("y", [1, 64])])


def test_01_nan_reproduced_by_both_backends_is_valid_and_counted(log_model, tmp_path):
    res = tmp_path / "r"
    _, by = run_ok("--model", log_model, "-b", "ort-cpu,tvm-llvm", *FAST, *TIMEOUT, "--results-dir", res)
    seen = {name: (by[name]["status"], by[name]["verdict"], by[name]["reason"]) for name in ("ort-cpu", "tvm-llvm")}
    assert all(status == "ok" and verdict == "VALID" for status, verdict, _ in seen.values()), seen
    for name in ("ort-cpu", "tvm-llvm"):
        fid = by[name]["accuracy"]["fidelity"]
        assert (fid.get("nonfinite") or 0) > 0, (name, fid)


# --- 02: a backend that turns the reference's NaN into 0 --------------------------------------

def test_02_nan_replaced_by_zero_is_invalid(tmp_path):
    three = numpy_helper.from_array(np.array(3.0, np.float32), "three")
    model = _save(tmp_path / "m" / "relu_sqrt.onnx",
                  [helper.make_node("Sqrt", ["x"], ["s"]), helper.make_node("Relu", ["s"], ["y"]),
                   helper.make_node("Mul", ["x", "three"], ["z"])],
                  [_vi("x", [1, 64])], [_vi("y", [1, 64]), _vi("z", [1, 64])], [three])
    _, by = run_ok("--model", model, "-b", "ort-cpu,nan-to-zero-double", *FAST, *TIMEOUT,
                   "--results-dir", tmp_path / "r")
    seen = {name: (r["status"], r["verdict"], r["reason"], r["accuracy"]["fidelity"]) for name, r in by.items()}
    assert by["ort-cpu"]["verdict"] == "VALID" and by["nan-to-zero-double"]["verdict"] == "INVALID", seen


# --- 03: --expected with one NaN and every other value wrong ----------------------------------

@pytest.mark.parametrize("which, verdict", [("wrong", "INVALID"), ("right", "VALID")])
def test_03_one_nan_in_expected_never_hides_the_errors(tmp_path, which, verdict):
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    model = _save(tmp_path / "m" / "add1.onnx", [helper.make_node("Add", ["x", "one"], ["y"])],
                  [_vi("x", [1, 8])], [_vi("y", [1, 8])], [one])
    x = np.arange(8, dtype=np.float32).reshape(1, 8)
    np.savez(tmp_path / "inputs.npz", x=x)
    expected = (x + 1).astype(np.float32)
    if which == "wrong":
        expected = expected + np.float32(1000)
        expected[0, 0] = np.nan
    np.save(tmp_path / "expected.npy", expected)
    _, by = run_ok("--model", model, "-b", "ort-cpu", "--input-data", tmp_path / "inputs.npz", "--expected",
                   tmp_path / "expected.npy", *FAST, *TIMEOUT, "--results-dir", tmp_path / "r")
    rec = by["ort-cpu"]
    assert rec["status"] == "ok" and rec["verdict"] == verdict, rec["accuracy"]


# --- 06: a static batch-1 model asked to run offline at batch 8 -------------------------------

def test_06_static_batch_model_never_recorded_at_a_batch_it_did_not_run(tmp_path):
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((256, 64)).astype(np.float32), "W")
    model = _save(tmp_path / "m" / "static_b1.onnx", [helper.make_node("MatMul", ["x", "W"], ["y"])],
                  [_vi("x", [1, 256])], [_vi("y", [1, 64])], [w])
    res = tmp_path / "r"
    proc = cli("run", "--model", model, "-b", "ort-cpu", "--scenario", "offline", "--batch", "8", *FAST, *TIMEOUT,
               "--results-dir", res)
    why = describe(proc, res, {"runs": {}})
    assert "Traceback" not in proc.stdout + proc.stderr, why
    if proc.returncode == 2:  # refused: the input and its fixed dim are named
        line = assert_refused(proc, res)
        assert re.search(r"\bx\b", line) and re.search(r"\b1\b", line), why
        return
    assert proc.returncode == 0, why
    (rec,) = records(res)
    assert rec["batch"] == 1, why
    assert any("batch" in note for note in rec["notes"]), (why, rec["notes"])


# --- 07: an input named like a TensorFlow tensor ("input_1:0") ---------------------------------

@pytest.fixture(scope="module")
def colon_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("f07") / "tf2onnx.onnx"
    return _save(path, [helper.make_node("Relu", ["input_1:0"], ["Identity:0"])], [_vi("input_1:0", ["N", "T", 8])],
                 [_vi("Identity:0", ["N", "T", 8])], opset=13, ir_version=7, producer_name="tf2onnx")


def test_07_input_name_with_a_colon_can_be_given_a_shape(colon_model, tmp_path):
    _, by = run_ok("--model", colon_model, "-b", "ort-cpu", "--input", "input_1:0=1x4x8", *FAST, *TIMEOUT,
                   "--results-dir", tmp_path / "r")
    assert by["ort-cpu"]["verdict"] == "VALID", by["ort-cpu"]["reason"]


def test_07_the_hint_for_a_colon_name_works(colon_model, tmp_path):
    res = tmp_path / "r"
    proc = cli("run", "--model", colon_model, "-b", "ort-cpu", *FAST, *TIMEOUT, "--results-dir", res)
    line = assert_refused(proc, res, "input_1:0")
    value = _hinted_input(line)
    proc = cli("run", "--model", colon_model, "-b", "ort-cpu", "--input", value, *FAST, *TIMEOUT, "--results-dir", res)
    assert proc.returncode == 0, f"the hint --input {value!r} does not work: {describe(proc, res, {'runs': {}})}"
    (rec,) = records(res)
    assert rec["verdict"] == "VALID"


# --- 10: TVM's failure names the operator -----------------------------------------------------

def test_10_upsample_opset9_failure_names_the_operator(tmp_path):
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    model = _save(tmp_path / "m" / "up9.onnx", [helper.make_node("Upsample", ["x", "scales"], ["y"], mode="nearest")],
                  [_vi("x", [1, 2, 4, 4])], [_vi("y", [1, 2, 8, 8])], [scales], opset=9, ir_version=4)
    res = tmp_path / "r"
    proc = cli("run", "--model", model, "-b", "tvm-llvm", *FAST, *TIMEOUT, "--results-dir", res)
    why = describe(proc, res, {"runs": {}})
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stdout + proc.stderr, why
    (rec,) = records(res)
    if rec["status"] == "ok":  # a TVM that runs it must get it right
        assert rec["verdict"] == "VALID", why
    else:
        assert rec["status"] in ("failed", "unsupported"), why
        assert "Upsample" in (rec["reason"] or ""), why


# --- 13: input data whose dtype does not match the graph --------------------------------------

@pytest.fixture(scope="module")
def float_model_with_float64_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("f13")
    model = _save(folder / "relu.onnx", [helper.make_node("Relu", ["input"], ["output"])],
                  [_vi("input", [1, 3, 8, 8])], [_vi("output", [1, 3, 8, 8])], opset=13)
    (folder / "test_data_set_0").mkdir()
    arr = np.random.default_rng(0).standard_normal((1, 3, 8, 8))  # float64, as np.random.randn gives
    (folder / "test_data_set_0" / "input_0.pb").write_bytes(numpy_helper.from_array(arr, "input").SerializeToString())
    return model


@pytest.mark.parametrize("data", ["test_data_set_0", "test_data_set_0/input_0.pb"], ids=["folder", "pb-file"])
def test_13_float64_data_for_a_float32_model_is_refused(float_model_with_float64_data, tmp_path, data):
    model = float_model_with_float64_data
    res = tmp_path / "r"
    proc = cli("run", "--model", model, "-b", "ort-cpu", "--input-data", model.parent / data, *FAST,
               *TIMEOUT, "--results-dir", res)
    line = assert_refused(proc, res, "float32", "float64")
    assert re.search(r"""['"`]input['"`]""", line), f"input 'input' not named: {line!r}"


def test_13_int64_input_spec_on_a_float_input_is_refused(float_model_with_float64_data, tmp_path):
    res = tmp_path / "r"
    proc = cli("run", "--model", float_model_with_float64_data, "-b", "ort-cpu", "--input", "input:1x3x8x8:int64",
               *FAST, *TIMEOUT, "--results-dir", res)
    assert_refused(proc, res, "int64")


# --- 14: external data: beside the model, cut short, escaping the folder ----------------------

@pytest.fixture(scope="module")
def external(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("f14")
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "ext", [_vi("x", [1, 64])],
                              [_vi("y", [1, 32])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for name in ("ok", "truncated"):
        (root / name).mkdir()
        onnx.save(onnx.ModelProto.FromString(model.SerializeToString()), root / name / "model.onnx",
                  save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    assert (root / "truncated" / "weights.bin").stat().st_size == 8192
    with open(root / "truncated" / "weights.bin", "r+b") as f:
        f.truncate(4000)  # a partial download
    (root / "escape").mkdir()
    escaped = onnx.load(root / "ok" / "model.onnx", load_external_data=False)
    for t in escaped.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../secret.bin"
    (root / "escape" / "model.onnx").write_bytes(escaped.SerializeToString())
    shutil.copy(root / "ok" / "weights.bin", root / "secret.bin")
    return root


def test_14_external_data_beside_the_model_runs(external, tmp_path):
    _, by = run_ok("--model", external / "ok" / "model.onnx", "-b", "ort-cpu", *FAST, *TIMEOUT,
                   "--results-dir", tmp_path / "r")
    assert by["ort-cpu"]["verdict"] == "VALID", by["ort-cpu"]["reason"]


def test_14_truncated_external_data_is_one_line(external, tmp_path):
    res = tmp_path / "r"
    proc = cli("run", "--model", external / "truncated" / "model.onnx", "-b", "ort-cpu", *FAST, *TIMEOUT,
               "--results-dir", res)
    assert_refused(proc, res, "weights.bin")


def test_14_external_data_escaping_the_folder_is_refused(external, tmp_path):
    res = tmp_path / "r"
    proc = cli("run", "--model", external / "escape" / "model.onnx", "-b", "ort-cpu", *FAST, *TIMEOUT,
               "--results-dir", res)
    assert_refused(proc, res, "escape/")


# --- 15: a graph that computes in fp16 --------------------------------------------------------

def test_15_fp16_graph_is_recorded_as_fp16_and_valid(tmp_path):
    w = numpy_helper.from_array((np.random.default_rng(0).standard_normal((512, 64)) / 8).astype(np.float16), "W")
    model = _save(tmp_path / "m" / "fp16mm.onnx", [helper.make_node("MatMul", ["x", "W"], ["y"])],
                  [_vi("x", [1, 512], TensorProto.FLOAT16)], [_vi("y", [1, 64], TensorProto.FLOAT16)], [w])
    res = tmp_path / "r"
    proc = cli("run", "--model", model, "-b", "ort-cpu,tvm-llvm", *FAST, *TIMEOUT, "--results-dir", res)
    why = describe(proc, res, {"runs": {}})
    assert proc.returncode == 0, why
    by = {r["backend"]["name"]: r for r in records(res)}
    for name in ("ort-cpu", "tvm-llvm"):
        assert by[name]["precision"] == "fp16", why
        assert by[name]["status"] == "ok" and by[name]["verdict"] == "VALID", why
    assert "[fp16, single-stream]" in proc.stderr and "[fp32," not in proc.stderr  # the progress lines too


# --- 18: a sequence-typed output --------------------------------------------------------------

def test_18_sequence_output_is_refused_by_name_and_type(tmp_path):
    model = _save(tmp_path / "m" / "seq.onnx",
                  [helper.make_node("SplitToSequence", ["x"], ["seq"], axis=1, keepdims=0)], [_vi("x", [1, 6])],
                  [helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)])
    res = tmp_path / "r"
    proc = cli("run", "--model", model, "-b", "ort-cpu", *FAST, *TIMEOUT, "--results-dir", res)
    assert_refused(proc, res, "seq", "sequence")


# --- 20: an int64 input that feeds a shape ----------------------------------------------------

@pytest.fixture(scope="module")
def reshape_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("f20")
    model = _save(folder / "dynreshape.onnx", [helper.make_node("Reshape", ["x", "shape"], ["y"])],
                  [_vi("x", [2, 8]), _vi("shape", [2], TensorProto.INT64)], [_vi("y", ["a", "b"])], opset=14)
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    np.savez(folder / "inputs.npz", x=x, shape=np.array([4, -1], np.int64))
    np.save(folder / "expected.npy", x.reshape(4, 4))
    return model


def test_20_shape_input_without_data_is_refused_by_name(reshape_model, tmp_path):
    res = tmp_path / "r"
    proc = cli("run", "--model", reshape_model, "-b", "ort-cpu", *FAST, *TIMEOUT, "--results-dir", res)
    line = assert_refused(proc, res)
    assert re.search(r"""['"`]shape['"`]""", line), f"input 'shape' not named: {line!r}"


def test_20_shape_input_with_data_runs(reshape_model, tmp_path):
    folder = reshape_model.parent
    _, by = run_ok("--model", reshape_model, "-b", "ort-cpu", "--input-data", folder / "inputs.npz", "--expected",
                   folder / "expected.npy", *FAST, *TIMEOUT, "--results-dir", tmp_path / "r")
    assert by["ort-cpu"]["verdict"] == "VALID", by["ort-cpu"]["reason"]


# --- 23: throughput counts the batch that ran, not an input's first dim -----------------------

def test_23_seq_first_gru_throughput_counts_the_batch(tmp_path):
    rng = np.random.default_rng(0)
    hidden, feat = 8, 4
    w = numpy_helper.from_array((rng.standard_normal((1, 3 * hidden, feat)) * 0.3).astype(np.float32), "W")
    r = numpy_helper.from_array((rng.standard_normal((1, 3 * hidden, hidden)) * 0.3).astype(np.float32), "R")
    model = _save(tmp_path / "m" / "gru.onnx", [helper.make_node("GRU", ["x", "W", "R"], ["y"], hidden_size=hidden)],
                  [_vi("x", [10, 1, feat])], [_vi("y", [10, 1, 1, hidden])], [w, r], opset=14)
    _, by = run_ok("--model", model, "-b", "ort-cpu", "--scenario", "single-stream", *FAST, *TIMEOUT,
                   "--results-dir", tmp_path / "r")
    rec = by["ort-cpu"]
    assert rec["verdict"] == "VALID", rec["reason"]
    assert rec["batch"] == 1
    expected = rec["batch"] * 1000 / rec["latency"]["mean"]
    assert rec["throughput"]["value"] == pytest.approx(expected, rel=1e-6), (rec["throughput"], rec["latency"]["mean"])


# --- 28: --batch 0 / -1 are refused before the sweep ------------------------------------------

@pytest.mark.parametrize("batch", ["0", "-1"])
def test_28_nonpositive_batch_is_refused(tmp_path, batch):
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32), "W")
    model = _save(tmp_path / "m" / "dynb.onnx", [helper.make_node("MatMul", ["x", "W"], ["y"])],
                  [_vi("x", ["N", 32])], [_vi("y", ["N", 8])], [w])
    res = tmp_path / "r"
    proc = cli("run", "--model", model, "-b", "ort-cpu", "--scenario", "offline", "--batch", batch, *FAST, *TIMEOUT,
               "--results-dir", res)
    assert_refused(proc, res, "--batch")
