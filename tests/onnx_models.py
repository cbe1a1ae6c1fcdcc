"""Small ONNX graphs built by hand, as foreign models from the wild would arrive."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def matmul_relu(path: Path, *, weights_as_inputs: bool = False, dynamic_batch: bool = True,
                opset: int = 13) -> Path:
    """y = relu(x @ W + b); optionally with W, b also listed as graph inputs (old exporters)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    batch = "N" if dynamic_batch else 2
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["z"]),
             helper.make_node("Relu", ["z"], ["y"])]
    inputs = [x]
    if weights_as_inputs:
        inputs += [helper.make_tensor_value_info("W", TensorProto.FLOAT, [8, 4]),
                   helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])]
    graph = helper.make_graph(nodes, "matmul_relu", inputs, [y], initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def gru(path: Path) -> Path:
    """A one-layer GRU: ONNX Runtime runs it, TVM's Relax importer has no GRU."""
    rng = np.random.default_rng(0)
    hidden, feat, steps = 4, 3, 5
    W = numpy_helper.from_array(rng.standard_normal((1, 3 * hidden, feat)).astype(np.float32), "W")
    R = numpy_helper.from_array(rng.standard_normal((1, 3 * hidden, hidden)).astype(np.float32), "R")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, 1, feat])
    y = helper.make_tensor_value_info("y_h", TensorProto.FLOAT, [1, 1, hidden])
    node = helper.make_node("GRU", ["x", "W", "R"], ["", "y_h"], hidden_size=hidden)
    graph = helper.make_graph([node], "gru", [x], [y], initializer=[W, R])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def constant_of_shape_bias(path: Path) -> Path:
    """y = x @ W + b where b is built at run time by ConstantOfShape (as some exporters do)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W")
    shape = numpy_helper.from_array(np.array([4], dtype=np.int64), "b_shape")
    nodes = [
        helper.make_node("ConstantOfShape", ["b_shape"], ["b"],
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5])),
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "cos_bias", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              initializer=[w, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 4
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
