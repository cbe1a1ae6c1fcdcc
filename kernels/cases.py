"""Kernel cases: operators at the shapes the workloads run, each with exact FLOP and minimum
byte counts, a numpy reference and a single-op ONNX model (opset 17) that every backend runs
the same way, through `ModelSource` and `get_backend(name).compile(...)`.

FLOP conventions (shared with `onnx_flops`, which must agree on every case): a multiply-add
is 2 FLOPs; elementwise ops and transcendentals (exp, erf) 1 per element; softmax 5 per element
(max, subtract, exp, sum, divide); layernorm 7 per element (mean, centre, square, variance sum,
normalise, scale, bias); a conv bias 1 per output element. Minimum bytes: every input read
once and every output written once, in the dtype. All tensors, weights too, are graph inputs,
so the reference and each backend see the same arrays.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper

from chipbench.backends.base import Arrays, ModelSource
from chipbench.paths import atomic_write_bytes, cache_dir

OPSET = 17
Shape = tuple[int, ...]


@dataclass
class KernelCase:
    name: str  # "<kernel>/<label>", e.g. "gemm/bert-ffn-up"
    kernel: str
    params: dict[str, int | float]
    inputs: dict[str, Shape]
    output: Shape  # every case has one output, "Y"
    flops: int
    nodes: list[onnx.NodeProto]
    ref: Callable[..., np.ndarray]  # numpy reference, called with the inputs by name
    tags: tuple[str, ...] = ()
    dtype: str = "float32"
    tolerance: float = 1e-4  # max |out - ref| / max |ref|

    @property
    def bytes(self) -> int:
        elems = sum(math.prod(s) for s in self.inputs.values()) + math.prod(self.output)
        return elems * np.dtype(self.dtype).itemsize

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes

    def make_inputs(self, seed: int = 0) -> Arrays:
        rng = np.random.default_rng(seed)
        return {n: rng.standard_normal(s, dtype=np.float32).astype(self.dtype) for n, s in self.inputs.items()}

    def reference(self, inputs: Arrays) -> Arrays:
        return {"Y": self.ref(**inputs)}

    def onnx_model(self) -> onnx.ModelProto:
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(self.dtype))
        graph = helper.make_graph(
            self.nodes,
            self.name.replace("/", "_"),
            [helper.make_tensor_value_info(n, elem, s) for n, s in self.inputs.items()],
            [helper.make_tensor_value_info("Y", elem, self.output)],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8  # what opset 17 needs; newer IRs outrun older runtimes
        onnx.checker.check_model(model, full_check=True)
        return model

    def source(self) -> ModelSource:
        """The ONNX file in the cache, named by its content hash."""
        data = self.onnx_model().SerializeToString()
        digest = hashlib.sha256(data).hexdigest()[:12]
        path = cache_dir("kernels") / f"{self.name.replace('/', '-')}-{digest}.onnx"
        if not path.exists() or path.read_bytes() != data:
            atomic_write_bytes(path, data)
        return ModelSource(self.name, Path(path), tuple(self.inputs), ("Y",))

    def error(self, out: np.ndarray, ref: np.ndarray) -> float:
        """Max absolute error relative to the reference's largest magnitude."""
        if out.shape != ref.shape:
            raise ValueError(f"{self.name}: output shape {out.shape} != reference {ref.shape}")
        scale = max(float(np.max(np.abs(ref))), 1e-30)
        return float(np.max(np.abs(out.astype(np.float64) - ref))) / scale


def _node(op: str, inputs: list[str], output: str = "Y", **attrs) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [output], **attrs)


def _const(name: str, value: float) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.FLOAT, [], [value]))


# --- GEMM family -------------------------------------------------------------------------------


def gemm(label: str, m: int, n: int, k: int, tags: tuple[str, ...] = ()) -> KernelCase:
    return KernelCase(
        f"gemm/{label}", "gemm", {"M": m, "N": n, "K": k}, {"A": (m, k), "B": (k, n)}, (m, n),
        2 * m * n * k, [_node("MatMul", ["A", "B"])], lambda A, B: A @ B, tags)


def batched_gemm(label: str, b: int, m: int, n: int, k: int, tags: tuple[str, ...] = ()) -> KernelCase:
    return KernelCase(
        f"batched_gemm/{label}", "batched_gemm", {"batch": b, "M": m, "N": n, "K": k},
        {"A": (b, m, k), "B": (b, k, n)}, (b, m, n), 2 * b * m * n * k,
        [_node("MatMul", ["A", "B"])], lambda A, B: A @ B, tags)


def _softmax(X: np.ndarray) -> np.ndarray:
    e = np.exp(X - X.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def attention(label: str, b: int, h: int, s: int, d: int, tags: tuple[str, ...] = ()) -> KernelCase:
    """softmax(Q K^T / sqrt(d)) V with K given transposed ([b, h, d, s]), as one small graph."""
    scale = 1.0 / math.sqrt(d)
    nodes = [
        _node("MatMul", ["Q", "Kt"], "scores"),
        _const("scale", scale),
        _node("Mul", ["scores", "scale"], "scaled"),
        _node("Softmax", ["scaled"], "probs", axis=-1),
        _node("MatMul", ["probs", "V"]),
    ]
    qkv = (b, h, s, d)
    scores = b * h * s * s
    return KernelCase(
        f"attention/{label}", "attention", {"batch": b, "heads": h, "seq": s, "head_dim": d},
        {"Q": qkv, "Kt": (b, h, d, s), "V": qkv}, qkv,
        2 * scores * d + scores + 5 * scores + 2 * scores * d, nodes,
        lambda Q, Kt, V: _softmax((Q @ Kt) * np.float32(scale)) @ V, tags)


# --- convolutions ------------------------------------------------------------------------------


def conv_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int, group: int) -> np.ndarray:
    """N-d grouped convolution as im2col (strided windows) + one einsum (BLAS underneath)."""
    sp = w.ndim - 2
    x = np.pad(x, [(0, 0), (0, 0)] + [(pad, pad)] * sp)
    win = sliding_window_view(x, w.shape[2:], axis=tuple(range(2, 2 + sp)))  # N,C,*pos,*k
    win = win[(slice(None), slice(None)) + (slice(None, None, stride),) * sp]
    n, c, out = x.shape[0], x.shape[1], win.shape[2 : 2 + sp]
    win = win.reshape(n, group, c // group, *win.shape[2:])
    wg = w.reshape(group, w.shape[0] // group, *w.shape[1:])
    o, k = "uvw"[:sp], "ijk"[:sp]
    y = np.einsum(f"ngc{o}{k},gmc{k}->ngm{o}", win, wg, optimize=True).reshape(n, w.shape[0], *out)
    return y + b.reshape(-1, *([1] * sp))


def _conv(kernel: str, label: str, x: Shape, co: int, k: int, stride: int, pad: int | None,
          group: int, tags: tuple[str, ...]) -> KernelCase:
    sp = len(x) - 2
    pad = k // 2 if pad is None else pad
    out = (x[0], co, *((d + 2 * pad - k) // stride + 1 for d in x[2:]))
    w = (co, x[1] // group, *([k] * sp))
    params = {"N": x[0], "C": x[1], "L" if sp == 1 else "HW": x[2], "K": co, "kernel": k,
              "stride": stride, "pad": pad, "group": group}
    node = _node("Conv", ["X", "W", "B"], kernel_shape=[k] * sp, strides=[stride] * sp,
                 pads=[pad] * (2 * sp), group=group)
    flops = 2 * math.prod(out) * math.prod(w[1:]) + math.prod(out)
    return KernelCase(f"{kernel}/{label}", kernel, params, {"X": x, "W": w, "B": (co,)}, out, flops,
                      [node], lambda X, W, B: conv_ref(X, W, B, stride, pad, group), tags)


def conv2d(label: str, n: int, c: int, hw: int, co: int, k: int, stride: int = 1,
           pad: int | None = None, tags: tuple[str, ...] = ()) -> KernelCase:
    return _conv("conv2d", label, (n, c, hw, hw), co, k, stride, pad, 1, tags)


def depthwise_conv2d(label: str, n: int, c: int, hw: int, k: int = 3, stride: int = 1,
                     tags: tuple[str, ...] = ()) -> KernelCase:
    return _conv("depthwise_conv2d", label, (n, c, hw, hw), c, k, stride, None, c, tags)


def conv1d(label: str, n: int, c: int, length: int, co: int, k: int, stride: int = 1,
           pad: int | None = None, tags: tuple[str, ...] = ()) -> KernelCase:
    return _conv("conv1d", label, (n, c, length), co, k, stride, pad, 1, tags)


# --- normalisation and elementwise -------------------------------------------------------------


def layernorm(label: str, rows: int, d: int, eps: float = 1e-5, tags: tuple[str, ...] = ()) -> KernelCase:
    def ref(X, scale, bias):
        mean = X.mean(-1, keepdims=True)
        var = ((X - mean) ** 2).mean(-1, keepdims=True)
        return (X - mean) / np.sqrt(var + eps) * scale + bias

    node = _node("LayerNormalization", ["X", "scale", "bias"], axis=-1, epsilon=eps)
    return KernelCase(f"layernorm/{label}", "layernorm", {"rows": rows, "d": d},
                      {"X": (rows, d), "scale": (d,), "bias": (d,)}, (rows, d), 7 * rows * d,
                      [node], ref, tags)


def softmax(label: str, shape: Shape, tags: tuple[str, ...] = ()) -> KernelCase:
    return KernelCase(f"softmax/{label}", "softmax", {"shape": "x".join(map(str, shape))},
                      {"X": shape}, shape, 5 * math.prod(shape),
                      [_node("Softmax", ["X"], axis=-1)], _softmax, tags)


def _gelu_ref(X: np.ndarray) -> np.ndarray:
    import torch  # numpy has no erf; torch is a declared dependency (scipy is not)

    return (0.5 * X * (1.0 + torch.erf(torch.from_numpy(X / np.float32(math.sqrt(2)))).numpy())).astype(X.dtype)


def gelu(label: str, shape: Shape, tags: tuple[str, ...] = ()) -> KernelCase:
    """Exact (erf) GELU as torch exports it at opset 17 (Gelu is an op only from opset 20)."""
    nodes = [
        _const("sqrt2", math.sqrt(2)), _const("one", 1.0), _const("half", 0.5),
        _node("Div", ["X", "sqrt2"], "xs"), _node("Erf", ["xs"], "e"),
        _node("Add", ["e", "one"], "e1"), _node("Mul", ["X", "e1"], "xe"),
        _node("Mul", ["xe", "half"]),
    ]
    return KernelCase(f"gelu/{label}", "gelu", {"shape": "x".join(map(str, shape))}, {"X": shape},
                      shape, 5 * math.prod(shape), nodes, _gelu_ref, tags)


def add(label: str, shape: Shape, tags: tuple[str, ...] = ()) -> KernelCase:
    return KernelCase(f"add/{label}", "add", {"shape": "x".join(map(str, shape))},
                      {"X": shape, "Z": shape}, shape, math.prod(shape),
                      [_node("Add", ["X", "Z"])], lambda X, Z: X + Z, tags)


# --- the registry ------------------------------------------------------------------------------


# Where the shapes come from (the workloads' models), as tags.
RESNET = ("defect-cnn", "resnet50")
MOBILENET = ("mobilenetv2",)  # edge-inspect is MobileNetV2-style, but at 96x96 and width 0.5
VIB = ("vibration-cnn1d",)
SENSOR = ("sensor-transformer",)
BERT = ("doc-encoder", "bert-base")
DEEP = ("deepbench",)


@cache
def _registry() -> tuple[KernelCase, ...]:
    seq, bert_d, bert_ff = 128, 768, 3072
    cases = [
        # DeepBench-style GEMM sweep: square, skinny (small batch), tall (im2col-like)
        gemm("square-512", 512, 512, 512, (*DEEP, "square")),
        gemm("square-1024", 1024, 1024, 1024, (*DEEP, "square")),
        gemm("square-2048", 2048, 2048, 2048, (*DEEP, "square")),
        gemm("skinny-m1", 1, 4096, 4096, (*DEEP, "skinny")),
        gemm("skinny-m16", 16, 1760, 1760, (*DEEP, "skinny")),
        gemm("skinny-m64", 64, 2560, 2560, (*DEEP, "skinny")),
        gemm("tall-n64", 16384, 64, 256, (*DEEP, "tall")),
        gemm("tall-n128", 8192, 128, 1024, (*DEEP, "tall")),
        # BERT-base encoder at seq 128 (batch 1): QKV, FFN up, FFN down
        gemm("bert-qkv", seq, 3 * bert_d, bert_d, BERT),
        gemm("bert-ffn-up", seq, bert_ff, bert_d, BERT),
        gemm("bert-ffn-down", seq, bert_d, bert_ff, BERT),
        # sensor transformer, d_model 64 and 256, FFN 4x
        gemm("sensor-d64-ffn", seq, 256, 64, SENSOR),
        gemm("sensor-d256-ffn", seq, 1024, 256, SENSOR),
        batched_gemm("bert-scores", 12, seq, seq, 64, BERT),
        batched_gemm("bert-context", 12, seq, 64, seq, BERT),
        attention("bert-base", 1, 12, seq, 64, BERT),
        attention("sensor-d64", 1, 4, seq, 16, SENSOR),
        attention("sensor-d256", 1, 8, seq, 32, SENSOR),
        # ResNet-50 at 224x224, batch 1
        conv2d("resnet-conv1", 1, 3, 224, 64, 7, stride=2, tags=RESNET),
        conv2d("resnet-res2-3x3", 1, 64, 56, 64, 3, tags=RESNET),
        conv2d("resnet-res2-1x1-reduce", 1, 256, 56, 64, 1, tags=RESNET),
        conv2d("resnet-res2-1x1-expand", 1, 64, 56, 256, 1, tags=RESNET),
        conv2d("resnet-res3-3x3", 1, 128, 28, 128, 3, tags=RESNET),
        conv2d("resnet-res4-3x3", 1, 256, 14, 256, 3, tags=RESNET),
        conv2d("resnet-res5-3x3", 1, 512, 7, 512, 3, tags=RESNET),
        # MobileNetV2 3x3 depthwise at 224x224, batch 1
        depthwise_conv2d("mbv2-c32-112", 1, 32, 112, tags=MOBILENET),
        depthwise_conv2d("mbv2-c96-112-s2", 1, 96, 112, stride=2, tags=MOBILENET),
        depthwise_conv2d("mbv2-c144-56", 1, 144, 56, tags=MOBILENET),
        depthwise_conv2d("mbv2-c384-14", 1, 384, 14, tags=MOBILENET),
        depthwise_conv2d("mbv2-c960-7", 1, 960, 7, tags=MOBILENET),
        # 1D CNN on 2048-sample vibration windows (WDCNN-style), batch 1 and 32
        conv1d("vib-wide-b1", 1, 1, 2048, 16, 64, stride=8, tags=VIB),
        conv1d("vib-wide-b32", 32, 1, 2048, 16, 64, stride=8, tags=VIB),
        conv1d("vib-k3-b32", 32, 16, 128, 32, 3, tags=VIB),
        conv1d("vib-k3-deep-b32", 32, 64, 32, 64, 3, tags=VIB),
        layernorm("bert", seq, bert_d, tags=BERT),
        layernorm("sensor-d64", seq, 64, tags=SENSOR),
        layernorm("sensor-d256", seq, 256, tags=SENSOR),
        softmax("bert-scores", (1, 12, seq, seq), BERT),
        softmax("sensor-d64-scores", (1, 4, seq, seq), SENSOR),
        gelu("bert-ffn", (seq, bert_ff), BERT),
        gelu("sensor-d256-ffn", (seq, 1024), SENSOR),
        add("bert-residual", (seq, bert_d), BERT),
        add("resnet-res2-residual", (1, 256, 56, 56), RESNET),
    ]
    smoke = [
        gemm("smoke", 24, 40, 32),
        batched_gemm("smoke", 3, 16, 24, 8),
        attention("smoke", 1, 2, 16, 8),
        conv2d("smoke", 1, 4, 9, 8, 3, stride=2),
        depthwise_conv2d("smoke", 1, 6, 10),
        conv1d("smoke", 2, 3, 64, 5, 7, stride=2),
        layernorm("smoke", 8, 32),
        softmax("smoke", (2, 3, 16)),
        gelu("smoke", (4, 40)),
        add("smoke", (4, 40)),
    ]
    for c in cases:
        c.tags = (c.kernel, *c.tags)
    for c in smoke:
        c.tags = (c.kernel, "smoke")
    return (*cases, *smoke)


def kernel_cases(tag: str | None = None) -> list[KernelCase]:
    """Cases carrying `tag` (a kernel name, workload, "deepbench", "square", ...); all full-size
    cases when None. "smoke" gives one tiny case per kernel, for tests."""
    if tag == "smoke":
        return [c for c in _registry() if "smoke" in c.tags]
    return [c for c in _registry() if "smoke" not in c.tags and (tag is None or tag in c.tags)]


def kernel_names() -> list[str]:
    return sorted({c.kernel for c in _registry()})
