"""The int8 configurations a practitioner tries with ONNX Runtime's own quantization tool.

Each configuration is a value object: a name, what it asks `onnxruntime.quantization.
quantize_static` for (format, per-channel or per-tensor weights, activation and weight types,
reduce_range, which operators are quantized and which nodes stay in fp32) and why one would
try it. `make_int8(config, ...)` writes its model. The choices follow ONNX Runtime's
quantization guide (https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html):
QDQ or QOperator format; U8S8 (uint8 activations, int8 weights) is its recommended default on
x86-64; reduce_range (7-bit weights) avoids the saturation of the u8×s8 instructions of
AVX2/AVX-512 CPUs without VNNI; keeping precision-sensitive or int8-slow operators in fp32
(`nodes_to_exclude`, `op_types_to_quantize`) is its advice when accuracy drops or a quantized
operator runs slower than its float kernel.

Calibration (running the model over the calibration batches to collect each tensor's range) is
the expensive part and does not depend on the configuration's types or format (MinMax keeps raw
minima and maxima), so the ranges are computed once per (model, calibration data, method) and
shared through ORT's `calibration_cache_path`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Operators whose int8 kernels carry the arithmetic (the "compute only" configurations quantize
# these and leave softmax, normalisation, GELU, residual adds and pooling in fp32).
COMPUTE_OPS = ("Conv", "MatMul", "Gemm")


@dataclass(frozen=True)
class Int8Config:
    """One static-quantization configuration, by name.

    `format`: "QDQ" (QuantizeLinear/DequantizeLinear pairs around float operators, which the
    runtime fuses into int8 kernels; what other runtimes read), "QOperator" (QLinearConv,
    QLinearMatMul, ... written into the graph; ONNX Runtime only) or "dynamic" (ORT's
    `quantize_dynamic`: int8 weights, activations quantized per query by
    DynamicQuantizeLinear, so `calibration` is "none"; ONNX Runtime only). `activations`/`weights`:
    "QUInt8" or "QInt8". `per_channel`: one weight scale per output channel, else one per tensor.
    `reduce_range`: 7-bit weights. `op_types`: the operator types quantized (None: all that ORT
    can). `exclude`: a named rule for nodes kept in fp32 ("depthwise-conv": grouped convolutions
    with one input channel per group; "first-layer": the first Conv/MatMul/Gemm). `matmul_const_b_only`: quantize only MatMuls whose second
    input is a weight (activation×activation products, e.g. attention scores, stay fp32).
    `calibration`: "MinMax", "Entropy" or "Percentile" ("none" for dynamic quantization)."""

    name: str
    format: str = "QDQ"
    activations: str = "QUInt8"
    weights: str = "QInt8"
    per_channel: bool = True
    reduce_range: bool = False
    op_types: tuple[str, ...] | None = None
    exclude: str | None = None
    matmul_const_b_only: bool = False
    calibration: str = "MinMax"
    why: str = field(default="", compare=False)

    @property
    def qdq(self) -> bool:
        """Whether the model is QDQ (readable by the other backends' int8 paths)."""
        return self.format == "QDQ"

    def key(self) -> dict[str, Any]:
        """What the model depends on (for cache keys): every argument, not the explanation."""
        d = asdict(self)
        d.pop("why")
        d["op_types"] = list(self.op_types) if self.op_types is not None else None
        return d

    def to_dict(self) -> dict[str, Any]:
        return {**self.key(), "why": self.why}


# The recipe every int8 cell ran before the search (kept first: it is the baseline).
OLD_RECIPE = Int8Config(
    "qdq-s8s8-perchannel", activations="QInt8", weights="QInt8",
    why="the previous fixed recipe: QDQ, int8 activations and weights, per-channel weights")

CANDIDATES: tuple[Int8Config, ...] = (
    OLD_RECIPE,
    Int8Config("qdq-u8s8-perchannel",
               why="ORT's recommended x86-64 default: uint8 activations × int8 weights (VNNI's native pair)"),
    Int8Config("qdq-u8s8-pertensor", per_channel=False,
               why="one scale per weight tensor: fewer rescales, coarser weights"),
    Int8Config("qdq-u8s8-reduce-range", reduce_range=True,
               why="7-bit weights: no u8×s8 saturation on CPUs without VNNI"),
    Int8Config("qdq-u8s8-compute-only", op_types=COMPUTE_OPS, matmul_const_b_only=True,
               why="only Conv/MatMul/Gemm with weights in int8: softmax, norms, GELU, adds and "
                   "attention's activation products stay fp32 (no Q/DQ around them)"),
    Int8Config("qdq-u8s8-keep-depthwise", exclude="depthwise-conv",
               why="depthwise convolutions stay fp32 (little arithmetic, int8 kernels rarely faster)"),
    Int8Config("qdq-u8s8-keep-first", exclude="first-layer",
               why="the first Conv/MatMul/Gemm (the stem, reading raw sensor or pixel data) stays fp32"),
    Int8Config("qop-u8s8-perchannel", format="QOperator",
               why="QOperator format: QLinearConv/QLinearMatMul written into the graph (ORT only)"),
    Int8Config("qop-u8s8-compute-only", format="QOperator", op_types=COMPUTE_OPS, matmul_const_b_only=True,
               why="QOperator, only Conv/MatMul/Gemm with weights in int8"),
    Int8Config("dynamic-s8-matmul", format="dynamic", activations="QUInt8", weights="QInt8",
               op_types=("MatMul", "Gemm"), matmul_const_b_only=True, calibration="none",
               why="dynamic quantization of the weighted MatMul/Gemm (activation ranges taken per query, "
                   "no calibration): ORT's advice for transformers"),
)


def candidate_names(candidates: tuple[Int8Config, ...] = CANDIDATES) -> list[str]:
    return [c.name for c in candidates]


def excluded_nodes(model: Any, rule: str | None) -> list[str]:
    """Names of the nodes `rule` keeps in fp32 in the ONNX `model` (a ModelProto, nodes in
    topological order as ONNX requires). "depthwise-conv": Conv nodes with `group` above 1 and
    one input channel per group (weight shape [C_out, 1, k...]). "first-layer": the first
    node of the graph whose type is in COMPUTE_OPS. ValueError for an unknown rule."""
    if rule is None:
        return []
    if rule == "first-layer":
        return next(([n.name] for n in model.graph.node if n.op_type in COMPUTE_OPS), [])
    if rule != "depthwise-conv":
        raise ValueError(f"unknown exclusion rule '{rule}'")
    weights = {t.name: t for t in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        w = weights.get(node.input[1]) if len(node.input) > 1 else None
        if group > 1 and w is not None and len(w.dims) > 1 and w.dims[1] == 1:
            names.append(node.name)
    return names


def not_applicable(config: Int8Config, model: Any) -> str | None:
    """Why `config` would make the same model as one without its exclusion rule (the ONNX
    `model` has nothing the rule keeps in fp32), or None when it applies."""
    if config.exclude and not excluded_nodes(model, config.exclude):
        return f"not applicable: the model has no node its '{config.exclude}' rule keeps in fp32"
    return None


def calibrate(pre_path: Path, calibration: Callable[[], list[dict]], method: str, ranges_file: Path) -> None:
    """Collect every tensor's range of `pre_path` (a model through ORT's `quant_pre_process`)
    over the `calibration()` batches with ORT's calibrator (`method`: MinMax, Entropy or
    Percentile) and save them to `ranges_file` (ORT's calibration-cache JSON), which every
    configuration with this method then reads."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator
    from onnxruntime.quantization.calibrate import save_tensors_data

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[dict] = iter(calibration())

        def get_next(self):
            return next(self._it, None)

    with tempfile.TemporaryDirectory(prefix="chipbench-calib-") as tmp:
        calibrator = create_calibrator(pre_path, None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=getattr(CalibrationMethod, method))
        calibrator.collect_data(Reader())
        save_tensors_data(calibrator.compute_data(), ranges_file)


def make_int8(config: Int8Config, pre_path: Path, out: Path, ranges_file: Path | None) -> None:
    """Write `config`'s int8 model of `pre_path` (a model already through ORT's
    `quant_pre_process`) to `out`, with the activation ranges in `ranges_file` (see
    `calibrate`; its method must be `config.calibration`; None for a dynamic configuration).
    Errors are ORT's (the caller reports them)."""
    import onnx
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    model = onnx.load(str(pre_path))
    extra = {"MatMulConstBOnly": True} if config.matmul_const_b_only else {}
    if config.format == "dynamic":
        quantize_dynamic(str(pre_path), str(out), op_types_to_quantize=list(config.op_types or []) or None,
                         per_channel=config.per_channel, reduce_range=config.reduce_range,
                         weight_type=getattr(QuantType, config.weights),
                         nodes_to_exclude=excluded_nodes(model, config.exclude) or None, extra_options=extra)
        return
    quantize_static(
        str(pre_path), str(out), None,
        quant_format=getattr(QuantFormat, config.format), per_channel=config.per_channel,
        reduce_range=config.reduce_range, activation_type=getattr(QuantType, config.activations),
        weight_type=getattr(QuantType, config.weights),
        op_types_to_quantize=list(config.op_types) if config.op_types else None,
        nodes_to_exclude=excluded_nodes(model, config.exclude) or None,
        calibrate_method=getattr(CalibrationMethod, config.calibration),
        calibration_cache_path=str(ranges_file), extra_options=extra)
