"""Every tensor type numpy can hold, at rank 0 and 2, round-trips through every ONNX backend;
what numpy cannot hold is refused up front, naming the value and its type."""

import onnx
import pytest
from onnx import TensorProto, helper

from chipbench.cell import execute
from chipbench.modelfile import NUMPY_DTYPES, ModelError, load_model_safely
from chipbench.scenarios import MeasureSettings
from chipbench.suite import Cell
from tests.doubles import accurate

SETTINGS = MeasureSettings(warmup_count=1, warmup_s=0.0, min_count=3, min_duration_s=0.0)


def identity_model(path, values):
    """One Identity per (name, ONNX element type, shape)."""
    inputs = [helper.make_tensor_value_info(f"x_{n}", t, s) for n, t, s in values]
    outputs = [helper.make_tensor_value_info(f"y_{n}", t, s) for n, t, s in values]
    nodes = [helper.make_node("Identity", [f"x_{n}"], [f"y_{n}"]) for n, _, _ in values]
    model = helper.make_model(helper.make_graph(nodes, "types", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("backend", ["ort-cpu", "tvm-llvm"])
def test_every_numpy_type_at_rank_0_and_2_round_trips(tmp_path, backend):
    values = [(f"{name}_{rank}", elem, [2, 3][:rank]) for elem, name in NUMPY_DTYPES.items() for rank in (0, 2)]
    model = identity_model(tmp_path / "types.onnx", values)
    cell = Cell(workload="types", backend=backend, model=str(model), settings=SETTINGS)
    record = execute(cell)
    assert record.status == "ok" and accurate(record), record.reason
    assert record.accuracy.fidelity.outputs_compared == len(values)


@pytest.mark.parametrize("elem, name", [(TensorProto.BFLOAT16, "bfloat16"), (TensorProto.STRING, "string"),
                                        (TensorProto.COMPLEX64, "complex64"), (TensorProto.FLOAT8E4M3FN, "float8e4m3fn")])
def test_a_type_numpy_cannot_hold_is_refused_naming_value_and_type(tmp_path, elem, name):
    model = identity_model(tmp_path / "t.onnx", [("v", elem, [2])])
    with pytest.raises(ModelError, match=f"input 'x_v' has element type {name},"):
        load_model_safely(model)


def test_a_sequence_output_is_refused_naming_it(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])
    seq = helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("SplitToSequence", ["x"], ["seq"], axis=1, keepdims=0)], "s", [x], [seq])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "seq.onnx")
    with pytest.raises(ModelError, match=r"output 'seq' is a sequence \(seq\(tensor\(float\)\)\), not a tensor"):
        load_model_safely(tmp_path / "seq.onnx")
