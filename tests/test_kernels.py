"""Kernel cases, ONNX FLOP/byte counting and the hand-written TIR GEMM."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper

from chipbench.backends.base import CompileSpec, get_backend
from chipbench.kernels.cases import conv2d, gemm, kernel_cases, kernel_names
from chipbench.kernels.onnx_flops import node_costs, ort_profile_ops, totals

F = TensorProto.FLOAT


def test_registry_has_smoke_and_full_cases_per_kernel():
    names = kernel_names()
    assert {"gemm", "batched_gemm", "attention", "conv2d", "depthwise_conv2d", "conv1d",
            "layernorm", "softmax", "gelu", "add"} <= set(names)
    for kernel in names:
        assert len([c for c in kernel_cases("smoke") if c.kernel == kernel]) == 1
        assert kernel_cases(kernel), kernel
    full = kernel_cases()
    assert len({c.name for c in full}) == len(full)
    assert not any("smoke" in c.tags for c in full)
    assert {c.params["M"] for c in kernel_cases("deepbench")} >= {1, 1024, 16384}


def test_counts_by_hand():
    g = gemm("t", 128, 3072, 768)
    assert g.flops == 2 * 128 * 3072 * 768
    assert g.bytes == 4 * (128 * 768 + 768 * 3072 + 128 * 3072)
    conv1 = conv2d("c", 1, 3, 224, 64, 7, stride=2)  # ResNet-50 conv1: 118 MMAC + bias
    assert conv1.output == (1, 64, 112, 112)
    assert conv1.flops == 2 * 64 * 112 * 112 * 3 * 49 + 64 * 112 * 112


@pytest.mark.parametrize("case", kernel_cases() + kernel_cases("smoke"), ids=lambda c: c.name)
def test_case_counts_agree_with_onnx_flops(case):
    got = totals(node_costs(case.onnx_model()))
    assert got["flops"] == case.flops
    if len(case.nodes) == 1:  # one node reads the inputs and writes the output: minimum bytes
        assert got["bytes"] == case.bytes


@pytest.mark.parametrize("case", kernel_cases("smoke"), ids=lambda c: c.name)
def test_smoke_case_ort_matches_reference(case):
    inputs = case.make_inputs(seed=1)
    compiled = get_backend("ort-cpu").compile(case.source(), CompileSpec(threads=1))
    assert case.error(compiled.run(inputs)["Y"], case.ref(**inputs)) <= case.tolerance


def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, F, s) for n, s in outputs], list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _weights(name, shape):
    return helper.make_tensor(name, F, shape, np.zeros(math.prod(shape), np.float32))


def test_onnx_flops_conv_gemm_transpose():
    model = _model(
        [
            # grouped conv: 8 -> 16 channels, 2 groups, 3x3, pad 1, on 10x10, with bias
            helper.make_node("Conv", ["x", "w", "b"], ["c"], group=2, kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv"),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("ConvTranspose", ["r", "wt"], ["u"], strides=[2, 2], kernel_shape=[2, 2], name="up"),
            helper.make_node("GlobalAveragePool", ["u"], ["p"], name="gap"),
            helper.make_node("Reshape", ["p", "shape"], ["f"], name="flat"),
            helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1, name="fc"),
        ],
        [("x", [2, 8, 10, 10])], [("y", [2, 5])],
        [_weights("w", [16, 4, 3, 3]), _weights("b", [16]), _weights("wt", [16, 4, 2, 2]),
         helper.make_tensor("shape", TensorProto.INT64, [2], [2, 4]),
         _weights("fc", [5, 4]), _weights("fcb", [5])],
    )
    c = {n.name: n for n in node_costs(model)}
    out = 2 * 16 * 10 * 10
    assert c["conv"].flops == 2 * out * 4 * 9 + out
    assert c["conv"].bytes == 4 * (2 * 8 * 100 + 16 * 4 * 9 + 16 + out)
    assert c["relu"].flops == out
    assert c["up"].outputs == [(2, 4, 20, 20)]
    assert c["up"].flops == 2 * (2 * 16 * 10 * 10) * 4 * 4  # each input meets Cout*kh*kw weights
    assert c["gap"].flops == 2 * 4 * 20 * 20
    assert c["flat"].flops == 0 and c["flat"].bytes == 4 * 8 + 8 * 2 + 4 * 8  # int64 shape tensor
    assert c["fc"].flops == 2 * 2 * 5 * 4 + 2 * 5
    assert all(n.complete for n in c.values())


def test_onnx_flops_matmul_norms_pools_and_symbolic_batch():
    model = _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),  # [B,4,6] @ [6,8] broadcast
            helper.make_node("Softmax", ["h"], ["s"], axis=-1, name="sm"),
            helper.make_node("LayerNormalization", ["s", "g"], ["n"], axis=-1, name="ln"),  # no bias
            helper.make_node("Unsqueeze", ["n", "ax"], ["n4"], name="unsq"),
            helper.make_node("MaxPool", ["n4"], ["y"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        ],
        [("x", ["B", 4, 6])], [("y", None)],
        [_weights("w", [6, 8]), _weights("g", [8]), helper.make_tensor("ax", TensorProto.INT64, [1], [1])],
    )
    c = {n.name: n for n in node_costs(model, dims={"B": 3})}
    assert c["mm"].flops == 2 * 3 * 4 * 8 * 6
    assert c["sm"].flops == 5 * 3 * 4 * 8
    assert c["ln"].flops == 6 * 3 * 4 * 8
    assert c["pool"].outputs == [(3, 1, 2, 4)] and c["pool"].flops == 3 * 2 * 4 * 4
    unbound = {n.name: n for n in node_costs(model)}
    assert not unbound["mm"].complete and unbound["mm"].flops == 0


@pytest.mark.parametrize("shape", [(64, 96, 80), (37, 50, 29)])  # tiles fit; ragged edges
def test_tir_gemm_matches_numpy(shape):
    from chipbench.kernels.tir_gemm import build_gemm, run_gemm

    m, n, k = shape
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
    np.testing.assert_allclose(run_gemm(build_gemm(m, n, k), a, b), a @ b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", [conv2d("s2", 1, 4, 9, 8, 3, stride=2), conv2d("ragged", 2, 5, 11, 40, 3),
                                  conv2d("1x1", 1, 16, 14, 64, 1)], ids=lambda c: c.name)
def test_tir_conv2d_matches_reference(case):
    from chipbench.kernels.tir_conv2d import build_conv2d, run_conv2d, shape_of

    inputs = case.make_inputs()
    out = run_conv2d(build_conv2d(shape_of(case)), shape_of(case), inputs["X"], inputs["W"], inputs["B"])
    assert case.error(out, case.ref(**inputs)) <= case.tolerance


def test_ort_profile_ops(tmp_path):
    import onnxruntime as ort

    model = _model(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2], name="pool")],
        [("x", [1, 4, 16, 16])], [("y", [1, 8, 8, 8])], [_weights("w", [8, 4, 3, 3])])
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp_path / "ort")
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run(None, {"x": np.ones((1, 4, 16, 16), np.float32)})
    ops = {o["op_type"]: o for o in ort_profile_ops(session.end_profiling(), model)}
    # fused with Relu, however ORT names it; NCHWc kernels pad the 8 output channels to the
    # vector block (16 on AVX-512), and the count is of the work ORT ran
    per_channel = 2 * 16 * 16 * 4 * 9
    assert ops["Conv"]["flops"] in (8 * per_channel, 16 * per_channel)
    assert ops["MaxPool"]["calls"] == 3 and ops["MaxPool"]["seconds"] > 0
    assert all(o["bytes"] > 0 for o in ops.values())
