"""Precision cells, the task-metric gate and operator coverage, in-process on small models."""

import pytest

from chipbench.cell import execute
from chipbench.report import coverage_matrix, precision_rows, render
from chipbench.scenarios import MeasureSettings
from chipbench.suite import Cell
from tests.doubles import accurate

QUICK = MeasureSettings(warmup_count=1, warmup_s=0.0, min_count=3, min_duration_s=0.0)


def run(workload, backend, precision="fp32", **kw):
    return execute(Cell(workload=workload, backend=backend, precision=precision, settings=QUICK, **kw))


def test_task_gate_catches_a_backend_that_is_fast_and_wrong():
    good = run("tiny-classifier", "ort-cpu", task_samples=64)
    assert accurate(good), good.validity
    assert good.accuracy.task["value"] == good.accuracy.task["reference"] == 1.0
    # null hands back the outputs of the timed inputs whatever it is asked: fidelity holds on
    # those inputs, but on the test split its predictions are constant and the task gate trips.
    wrong = run("tiny-classifier", "null", task_samples=64)
    assert wrong.accuracy.failures and wrong.verdict == "INVALID"
    assert "accuracy" in wrong.reason and "gate 99%" in wrong.reason


@pytest.mark.parametrize("backend", ["ort-cpu", "tvm-llvm"])
def test_int8_cell_is_calibrated_and_within_its_tolerance(backend):
    params = {"window": 256, "train": False}
    rec = run("vibration-cnn1d", backend, "int8", workload_params=params, task_samples=0)
    assert rec.status == "ok", rec.reason
    assert accurate(rec), rec.validity
    assert "int8" in rec.backend["pipeline"]
    assert rec.accuracy.fidelity.rel_l2 > 0  # it really is quantized


def test_torch_bf16_and_unsupported_combinations_are_reported():
    rec = run("tiny-mlp", "torch-eager", "bf16")
    assert rec.status == "ok" and accurate(rec) and "bfloat16" in rec.backend["pipeline"]
    rec = run("tiny-mlp", "torch-eager", "int8")
    assert rec.status == "unsupported" and "not int8" in rec.reason


def test_precision_table_and_coverage_matrix():
    recs = [run("tiny-mlp", "ort-cpu", p, task_samples=0) for p in ("fp32", "int8")]
    rows = precision_rows(recs)
    assert [r.precision for r in rows] == ["fp32", "int8"]
    assert rows[0].speedup == pytest.approx(1.0) and rows[1].speedup > 0
    backends, matrix = coverage_matrix(recs)
    assert backends == ["ort-cpu"]
    assert dict(matrix)["Gemm"] == ["✓"]
    md = render(recs, "md")
    assert "## Precision" in md and "## Operator coverage" in md


def test_coverage_names_the_operator_tvm_cannot_import():
    rec = run("rul-gru", "tvm-llvm", workload_params={"train": False}, task_samples=0)
    assert rec.status == "unsupported" and "GRU" in rec.reason
    assert rec.coverage["status"]["GRU"] == "unsupported"
    assert set(rec.coverage["status"].values()) <= {"unsupported", "not reached"}
    _, matrix = coverage_matrix([rec])
    assert dict(matrix)["GRU"] == ["✗ rul-gru"]
