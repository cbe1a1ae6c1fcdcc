"""int8 configurations and the search for the one a deployer would run (chipbench.int8_configs,
chipbench.int8_search): every configuration makes a model ONNX Runtime runs, the selection is
the fastest passing one, a failing one is never chosen, the search is cached by its exact key,
and cells record what executed and why."""

from __future__ import annotations

import numpy as np
import pytest

from chipbench.accuracy import Tolerance
from chipbench.int8_configs import CANDIDATES, OLD_RECIPE, Int8Config, excluded_nodes
from chipbench.int8_gate import AccuracyGate
from chipbench.int8_search import Measured, SearchResult, search, select

pytest.importorskip("onnxruntime")


def tiny_model(path):
    """Conv 4->8 3x3, Relu, depthwise Conv 8x3x3 (group 8), GlobalAveragePool, Flatten, Gemm 8->5."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(a.astype(np.float32), name) for name, a in (
        ("w1", rng.normal(0, 0.3, (8, 4, 3, 3))), ("b1", rng.normal(0, 0.1, 8)),
        ("w2", rng.normal(0, 0.3, (8, 1, 3, 3))), ("b2", rng.normal(0, 0.1, 8)),
        ("w3", rng.normal(0, 0.3, (5, 8))), ("b3", rng.normal(0, 0.1, 5)))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="dwconv", group=8, pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def batches():
    return [{"x": np.random.default_rng(100 + i).normal(size=(1, 4, 8, 8)).astype(np.float32)} for i in range(4)]


CAL_KEY = {"test": "tiny", "n": 4}


@pytest.fixture
def model(tmp_path):
    return tiny_model(tmp_path / "tiny.onnx")


def reference(model_path, inputs):
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return {"y": session.run(["y"], inputs)[0]}


def test_every_configuration_makes_a_model_onnx_runtime_runs(model):
    import onnx
    import onnxruntime as ort

    from chipbench.quantize import int8_model

    x = batches()[0]
    ref = reference(model, x)["y"]
    assert len({c.name for c in CANDIDATES}) == len(CANDIDATES) and CANDIDATES[0] == OLD_RECIPE
    paths = set()
    for config in CANDIDATES:
        path = int8_model(model, batches, CAL_KEY, config)
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
        ops = {n.op_type for n in proto.graph.node}
        if config.qdq:
            assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops, config.name
        elif config.format == "dynamic":  # the Gemm's activations are quantized per query
            assert {"DynamicQuantizeLinear", "Conv"} <= ops, config.name
        else:
            assert "QLinearConv" in ops, config.name
        kept = {"depthwise-conv": ("dwconv", "w2"), "first-layer": ("conv", "w1")}.get(config.exclude)
        if kept:  # the node kept in fp32 reads its float weight
            node = next(n for n in proto.graph.node if n.name == kept[0])
            assert node.input[1] == kept[1], config.name
        y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["y"], x)[0]
        assert y.shape == ref.shape and np.all(np.isfinite(y))
        assert 0 < np.linalg.norm(y - ref) / np.linalg.norm(ref) < 0.5, config.name  # quantized, still close
        paths.add(path)
    assert len(paths) == len(CANDIDATES)  # each configuration is a model of its own


def test_exclusion_rules_name_the_nodes_they_keep(model):
    import onnx

    proto = onnx.load(str(model))
    assert excluded_nodes(proto, "depthwise-conv") == ["dwconv"]
    assert excluded_nodes(proto, "first-layer") == ["conv"]
    assert excluded_nodes(proto, None) == []
    with pytest.raises(ValueError, match="unknown exclusion"):
        excluded_nodes(proto, "everything")


def m(name, p50, passed, qdq=True, rel_l2=0.01):
    return Measured(name, p50, passed, qdq, rel_l2, 0.999)


def test_selection_is_the_fastest_passing_configuration():
    measured = [m("a", 0.30, True), m("b", 0.20, True), m("c", 0.25, True)]
    choice = select(0.22, measured)
    assert (choice.chosen, choice.qdq, choice.passed, choice.beats_fp32) == ("b", "b", True, True)
    assert select(0.10, measured).beats_fp32 is False  # int8 loses: still the best int8
    # a tie goes to the earlier candidate
    assert select(1.0, [m("a", 0.2, True), m("b", 0.2, True)]).chosen == "a"


def test_a_failing_configuration_is_never_chosen_however_fast():
    measured = [m("fast-wrong", 0.05, False, rel_l2=0.5), m("slow-right", 0.40, True),
                m("broken", None, False, rel_l2=None)]
    choice = select(0.30, measured)
    assert choice.chosen == "slow-right" and not choice.beats_fp32
    assert "fast-wrong" in choice.why  # named as failing the gate
    none = select(0.30, [m("x", 0.1, False, rel_l2=0.4), m("y", 0.2, False, rel_l2=0.3)])
    assert none.chosen == "y" and none.passed is False and "no configuration passes" in none.why
    tie = select(0.30, [m("slow", 0.5, False, rel_l2=0.3), m("fast", 0.2, False, rel_l2=0.3), m("z", 0.1, False, rel_l2=0.4)])
    assert tie.chosen == "fast"  # equally faithful: the faster
    assert select(0.3, [m("broken", None, False, rel_l2=None)]).chosen is None


def test_other_backends_get_the_best_qdq_configuration_when_qoperator_wins():
    measured = [m("qdq-slow", 0.30, True), m("qop-fast", 0.10, False, qdq=False), m("qop", 0.12, True, qdq=False),
                m("qdq-fast", 0.20, True)]
    choice = select(0.25, measured)
    assert (choice.chosen, choice.qdq) == ("qop", "qdq-fast")
    result = SearchResult(choice.chosen, choice.qdq, choice.passed, choice.beats_fp32, choice.why, 0.25, measured,
                          {x.name: {} for x in measured})
    ort, tvm = result.record("chosen", "ort-cpu"), result.record("qdq", "tvm-llvm")
    assert ort["executed"] == "qop" and tvm["executed"] == "qdq-fast"
    assert "tvm-llvm reads QDQ models" in tvm["why"] and tvm["passed_gate"] and tvm["beats_fp32"]


def test_search_is_cached_by_its_exact_key(model, monkeypatch):
    monkeypatch.setenv("CHIPBENCH_QUIET_CORES", "off")  # cache whatever the machine's load
    x = batches()[0]
    gate = AccuracyGate(Tolerance(float("inf"), 0.25, 0.97), x, reference(model, x))
    few = (OLD_RECIPE, Int8Config("qdq-u8s8-pertensor", per_channel=False))
    first = search(model, batches, CAL_KEY, gate, threads=1, candidates=few, budget_s=0.02)
    assert not first.cached and first.chosen in {c.name for c in few} and first.passed
    assert [a.name for a in first.alternatives] == [c.name for c in few]
    assert all(a.p50_ms > 0 and a.passed for a in first.alternatives) and first.fp32_p50_ms > 0
    again = search(model, batches, CAL_KEY, gate, threads=1, candidates=few, budget_s=0.02)
    assert again.cached and again.chosen == first.chosen and again.alternatives == first.alternatives
    # any part of the key changes: the search runs again
    strict = AccuracyGate(Tolerance(float("inf"), 1e-9, 0.97), x, gate.reference)
    third = search(model, batches, CAL_KEY, strict, threads=1, candidates=few, budget_s=0.02)
    assert not third.cached and not third.passed  # nothing quantized is that close
    assert not search(model, batches, CAL_KEY, gate, threads=1, candidates=few[:1], budget_s=0.02).cached


def test_int8_cell_records_the_configuration_it_ran_and_why():
    from chipbench.cell import execute
    from chipbench.record import validate
    from chipbench.scenarios import MeasureSettings
    from chipbench.suite import Cell

    quick = MeasureSettings(warmup_count=1, warmup_s=0.0, min_count=3, min_duration_s=0.0)
    rec = execute(Cell(workload="tiny-mlp", backend="ort-cpu", precision="int8", settings=quick, task_samples=0))
    assert rec.status == "ok", rec.reason
    q = rec.quantization
    assert q["executed"] in {c.name for c in CANDIDATES} and q["executed"] in rec.backend["pipeline"]
    assert [a["name"] for a in q["alternatives"]] == [c.name for c in CANDIDATES]
    assert q["why"] and q["fp32_p50_ms"] > 0 and q["config"]["name"] == q["executed"]
    assert q["passed_gate"] and not rec.accuracy.failures  # the search checked the gate the cell checks
    validate(rec.to_dict())
    fp32 = execute(Cell(workload="tiny-mlp", backend="ort-cpu", settings=quick, task_samples=0))
    assert fp32.quantization is None
    validate(fp32.to_dict())
    # the report names the configuration, and calls int8 a loss only when the cells say so
    import copy
    import dataclasses

    from chipbench.report import render
    from chipbench.report_int8 import int8_findings

    md = render([fp32, rec], "md")
    assert "int8: the configuration a deployer would choose" in md and q["executed"] in md
    assert "int8: the configuration a deployer would choose" in render([fp32, rec], "html")
    slow = copy.deepcopy(rec)
    slow.latency = dataclasses.replace(slow.latency, median=fp32.latency.median * 2)
    slow.quantization["loss_reason"] = "slower in int8 (per-op sum fp32 -> int8): quantize/dequantize 0 -> 1 ms"
    chosen = next(a for a in slow.quantization["alternatives"] if a["name"] == q["executed"])
    chosen["p50_ms"] = slow.quantization["fp32_p50_ms"] * 1.5  # the search's paired timing agrees: slower
    [finding] = int8_findings([fp32, slow])
    assert finding.loses and finding.speedup == pytest.approx(0.5) and "quantize/dequantize" in finding.text
    # two processes against one: where the paired timing has int8 faster, the cells decide nothing
    chosen["p50_ms"] = slow.quantization["fp32_p50_ms"] / 2
    [finding] = int8_findings([fp32, slow])
    assert not finding.loses and finding.text.startswith("undecided between processes") and "2.00× fp32" in finding.text
    # the search times on ONNX Runtime: its timing says nothing of another backend's two cells
    on_other, fp32_other = copy.deepcopy(slow), copy.deepcopy(fp32)
    for r in (on_other, fp32_other):
        r.backend = {**r.backend, "name": "openvino-cpu"}
    [finding] = int8_findings([fp32_other, on_other])
    assert finding.loses and q["timed_on"] == "ort-cpu"
    par = copy.deepcopy(rec)
    par.latency = dataclasses.replace(par.latency, median=fp32.latency.median * 1.03)
    [finding] = int8_findings([fp32, par])
    assert not finding.loses and finding.text.startswith("on par with fp32")
    failing = copy.deepcopy(rec)
    failing.quantization.update(passed_gate=False, why="no configuration passes the accuracy gate; x is the most faithful")
    assert int8_findings([fp32, failing])[0].loses
    assert "no configuration passes" in int8_findings([fp32, failing])[0].text


def test_a_rule_with_nothing_to_keep_is_not_measured(tmp_path, monkeypatch):
    import onnx

    from chipbench.int8_configs import not_applicable

    monkeypatch.setenv("CHIPBENCH_QUIET_CORES", "off")
    path = tiny_model(tmp_path / "plain.onnx")
    proto = onnx.load(str(path))
    for node in proto.graph.node:  # the depthwise conv becomes a plain one
        if node.name == "dwconv":
            node.input[1] = "w1b"
            del node.attribute[:]
            node.attribute.extend([onnx.helper.make_attribute("pads", [1, 1, 1, 1])])
    proto.graph.initializer.append(onnx.numpy_helper.from_array(
        np.random.default_rng(1).normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), "w1b"))
    onnx.save(proto, str(path))
    keep_dw = next(c for c in CANDIDATES if c.exclude == "depthwise-conv")
    assert "not applicable" in not_applicable(keep_dw, proto)
    x = batches()[0]
    gate = AccuracyGate(Tolerance(float("inf"), 0.25, 0.97), x, reference(path, x))
    result = search(path, batches, CAL_KEY, gate, threads=1, candidates=(OLD_RECIPE, keep_dw), budget_s=0.02)
    skipped = result.alternatives[1]
    assert skipped.p50_ms is None and not skipped.passed and "not applicable" in skipped.error
    assert result.chosen == OLD_RECIPE.name


def test_the_task_metric_is_checked_fastest_first_and_only_as_far_as_needed(model, monkeypatch):
    monkeypatch.setenv("CHIPBENCH_QUIET_CORES", "off")
    x = batches()[0]
    few = (OLD_RECIPE, Int8Config("qdq-u8s8-pertensor", per_channel=False))
    calls = []

    def gate(verdict):
        def task(run):
            calls.append(run(x)["y"].shape)
            return {"failures": [] if verdict else ["accuracy 0.5 vs FP32 0.9 (55.6% of reference, gate 99%)"]}

        return AccuracyGate(Tolerance(float("inf"), 0.25, 0.97), x, reference(model, x), task, {"verdict": verdict})

    ok = search(model, batches, CAL_KEY, gate(True), threads=1, candidates=few, budget_s=0.02)
    assert len(calls) == 1 and ok.passed  # both QDQ: the fastest passing both gates settles it
    [checked] = [a for a in ok.alternatives if a.task_checked]
    assert checked.name == ok.chosen
    calls.clear()
    bad = search(model, batches, CAL_KEY, gate(False), threads=1, candidates=few, budget_s=0.02)
    assert len(calls) == 2 and not bad.passed  # none passes: every one was checked
    assert all(a.task_checked and "gate 99%" in a.gate_failure for a in bad.alternatives)


def test_loss_reason_names_operator_families_from_both_profiles(model):
    from types import SimpleNamespace

    from chipbench.int8_loss import family_times, loss_reason
    from chipbench.quantize import int8_model

    prof = SimpleNamespace(ops=[SimpleNamespace(op_type="QuantizeLinear", category="other", time_ms=0.1),
                                SimpleNamespace(op_type="QLinearConv", category="conv", time_ms=0.3),
                                SimpleNamespace(op_type="DequantizeLinear", category="other", time_ms=0.2)])
    assert family_times(prof) == pytest.approx({"quantize/dequantize": 0.3, "conv": 0.3})
    text = loss_reason(model, int8_model(model, batches, CAL_KEY), batches()[0], threads=1, runs=3)
    assert text.startswith("slower in int8 (per-op sum fp32 -> int8): ")
