"""openvino-cpu: fp32 computes in f32 (set explicitly, read back), int8 runs the QDQ model on int8
kernels, bf16 runs where the CPU plugin lists BF16 and is unsupported, saying why, elsewhere."""

import importlib.util

import numpy as np
import pytest

from chipbench.backends.base import CompileSpec, ModelSource, Unsupported, get_backend
from chipbench.cell import execute
from chipbench.scenarios import MeasureSettings
from chipbench.suite import Cell
from tests.doubles import accurate

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed (pip install '.[openvino]')")

VIBRATION = {"window": 256, "train": False}
TRANSFORMER = {"steps": 16, "channels": 8, "d_model": 16, "layers": 1, "heads": 2, "train": False}
QUICK = MeasureSettings(warmup_count=1, warmup_s=0.0, min_count=3, min_duration_s=0.0)


def run(workload, params, precision="fp32", **kw):
    return execute(Cell(workload=workload, backend="openvino-cpu", precision=precision, workload_params=params,
                        settings=QUICK, task_samples=0, **kw))


@needs_openvino
def test_fp32_computes_in_f32_within_the_gate():
    rec = run("vibration-cnn1d", VIBRATION)
    assert rec.status == "ok", rec.reason
    assert accurate(rec), rec.validity
    details = rec.backend["details"]
    assert details["inference_precision"] == "f32"  # set explicitly: the plugin's default may be bf16
    assert set(details["runtime_precisions"]) <= {"f32", "i32", "i64"}, details["runtime_precisions"]
    assert details["performance_hint"] == "LATENCY" and details["streams"] >= 1
    assert "inference precision f32" in rec.backend["pipeline"]
    assert rec.resources.threads["backend"] == details["threads"] >= 1
    assert rec.backend["versions"]["openvino"]


@needs_openvino
def test_threads_asked_are_threads_read_back():
    rec = run("vibration-cnn1d", VIBRATION, threads=1)
    assert rec.status == "ok", rec.reason
    assert rec.backend["details"]["threads"] == 1 == rec.resources.threads["requested"]


@needs_openvino
def test_int8_runs_the_qdq_model_on_int8_kernels():
    rec = run("sensor-transformer", TRANSFORMER, "int8")
    assert rec.status == "ok", rec.reason
    assert accurate(rec), rec.validity
    details = rec.backend["details"]
    assert {"i8", "u8"} & set(details["runtime_precisions"]), details["runtime_precisions"]
    assert "QDQ" in rec.backend["pipeline"]


@needs_openvino
def test_bf16_runs_where_the_cpu_has_it_else_says_why():
    import openvino as ov

    rec = run("sensor-transformer", TRANSFORMER, "bf16")
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert rec.status == "ok", rec.reason
        assert accurate(rec), rec.validity
        assert rec.backend["details"]["inference_precision"] == "bf16"
        assert "bf16" in rec.backend["details"]["runtime_precisions"]
    else:
        assert rec.status == "unsupported"
        assert "AVX512-BF16" in rec.reason and "OPTIMIZATION_CAPABILITIES" in rec.reason


def test_bf16_without_the_capability_is_unsupported():
    from chipbench.backends.openvino import check_bf16

    class Core:  # what the CPU plugin answers on a CPU with AVX2 only
        def get_property(self, device, name):
            assert (device, name) == ("CPU", "OPTIMIZATION_CAPABILITIES")
            return ["WINOGRAD", "FP32", "INT8", "BIN", "EXPORT_IMPORT"]

    with pytest.raises(Unsupported, match="neither AMX nor AVX512-BF16.*FP32, INT8"):
        check_bf16(Core())


def test_without_the_wheel_it_is_skipped_with_its_reason(monkeypatch):
    import chipbench.backends.openvino as module

    real = importlib.util.find_spec
    monkeypatch.setattr(module.importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    ok, why = get_backend("openvino-cpu").available()
    assert not ok and "openvino is not installed" in why
    rec = run("vibration-cnn1d", VIBRATION)
    assert rec.status == "skipped" and "openvino is not installed" in rec.reason


@needs_openvino
def test_read_only_inputs_are_accepted(tmp_path):
    from onnx_models import matmul_relu

    compiled = get_backend("openvino-cpu").compile(
        ModelSource("mm", matmul_relu(tmp_path / "mm.onnx", dynamic_batch=False), ("x",), ("y",)),
        CompileSpec(threads=1))
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    x.flags.writeable = False  # as an array loaded from a file or a buffer can be
    np.testing.assert_allclose(compiled.run({"x": x})["y"], compiled.run({"x": x.copy()})["y"])
