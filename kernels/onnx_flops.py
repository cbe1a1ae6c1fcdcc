"""FLOP and byte counts for every node of an ONNX model, from inferred shapes, so per-op
profiles (ONNX Runtime's profiler, TVM's) can be placed on the roofline.

Conventions match `chipbench.kernels.cases`: a multiply-add is 2 FLOPs; elementwise ops and
transcendentals 1 per output element; Softmax/LogSoftmax 5 per element; LayerNormalization 6
per element plus 1 with a bias (group/instance norms alike); BatchNormalization 2 (scale and
shift, as inference folds it); pools one per window element; reductions one per input element;
a Conv/Gemm bias 1 per output element. Data movement and unknown ops are 0 FLOPs. Bytes are
every input read once and every output written once, in their dtypes (weights included).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, shape_inference

ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mod", "Neg", "Abs", "Reciprocal", "Sqrt",
    "Exp", "Log", "Erf", "Tanh", "Sigmoid", "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu",
    "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Gelu", "Mish", "Clip", "Sin", "Cos",
    "Floor", "Ceil", "Round", "Sign", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual",
    "And", "Or", "Xor", "Not", "Where", "IsNaN", "BiasGelu", "FastGelu", "QuickGelu",
}
REDUCE = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceSumSquare", "ReduceLogSumExp", "GlobalAveragePool", "GlobalMaxPool", "ArgMax", "ArgMin"}
POOL = {"MaxPool", "AveragePool", "LpPool"}
NORM = {"LayerNormalization", "GroupNormalization", "InstanceNormalization", "SimplifiedLayerNormalization"}


@dataclass
class NodeCost:
    name: str
    op_type: str
    flops: int
    bytes: int
    inputs: list[tuple[int, ...] | None]  # None: a shape inference could not fix
    outputs: list[tuple[int, ...] | None]

    @property
    def complete(self) -> bool:
        """False when some tensor shape was unknown (its bytes, maybe its FLOPs, are missing)."""
        return all(s is not None for s in (*self.inputs, *self.outputs))

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "op_type": self.op_type, "flops": self.flops, "bytes": self.bytes}


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _fix_inputs(model: onnx.ModelProto, dims: Mapping[str, int]) -> onnx.ModelProto:
    """Bind symbolic input dims (e.g. batch) so inference yields numbers."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for vi in model.graph.input:
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in dims:
                d.dim_value = dims[d.dim_param]
    return model


def _tensor_table(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...] | None, int]]:
    """name -> (shape or None, element size in bytes) for every typed tensor in the graph."""
    table: dict[str, tuple[tuple[int, ...] | None, int]] = {}
    g = model.graph
    for vi in (*g.input, *g.value_info, *g.output):
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        shape = tuple(dims) if t.HasField("shape") and None not in dims else None
        size = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).itemsize if t.elem_type else 4
        table[vi.name] = (shape, size)
    for init in g.initializer:
        table[init.name] = (tuple(init.dims), np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize)
    for node in g.node:  # Constant outputs are not always in value_info
        if node.op_type == "Constant" and node.output[0] not in table:
            t = _attr(node, "value")
            if t is not None:
                table[node.output[0]] = (tuple(t.dims), np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize)
    return table


def node_flops(node: onnx.NodeProto, ins: list[tuple[int, ...] | None], outs: list[tuple[int, ...] | None]) -> int:
    """FLOPs of one node given its input and output shapes (0 where a needed shape is unknown)."""
    op, out = node.op_type, outs[0] if outs else None
    if out is None:
        return 0
    n_out = math.prod(out)
    has_bias = len(ins) > 2 and ins[2] is not None
    if op in ("Conv", "ConvTranspose") and ins[1] is not None:
        w = ins[1]
        if op == "Conv":  # each output: (Cin/group) * prod(kernel) MACs
            macs = n_out * math.prod(w[1:])
        else:  # each input element meets (Cout/group) * prod(kernel) weights; w = [Cin, Cout/g, *k]
            x = ins[0]
            macs = x[0] * math.prod(x[2:]) * math.prod(w) if x is not None else 0
        return 2 * macs + (n_out if has_bias else 0)
    if op in ("MatMul", "MatMulInteger", "FusedMatMul") and ins[0] is not None:
        return 2 * n_out * ins[0][-1]
    if op == "Gemm" and ins[0] is not None:
        k = ins[0][0] if _attr(node, "transA", 0) else ins[0][-1]
        return 2 * n_out * k + (n_out if has_bias else 0)
    if op in ELEMENTWISE:
        return n_out
    if op == "Sum":
        return n_out * (len(ins) - 1)
    if op in ("Softmax", "LogSoftmax"):
        return 5 * n_out
    if op in NORM:
        return (6 + (1 if has_bias else 0)) * n_out
    if op == "BatchNormalization":
        return 2 * n_out
    if op in POOL:
        return n_out * math.prod(_attr(node, "kernel_shape", [1]))
    if op in REDUCE and ins[0] is not None:
        return math.prod(ins[0])
    return 0


def node_costs(model: onnx.ModelProto | str | Path, dims: Mapping[str, int] | None = None) -> list[NodeCost]:
    """One NodeCost per graph node, in graph order. `dims` binds symbolic input dims."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    model = shape_inference.infer_shapes(_fix_inputs(model, dims or {}), data_prop=True)
    table = _tensor_table(model)
    costs = []
    for i, node in enumerate(model.graph.node):
        ins = [table.get(n, (None, 0)) for n in node.input if n]  # "" = omitted optional input
        outs = [table.get(n, (None, 0)) for n in node.output if n]
        nbytes = sum(math.prod(s) * size for s, size in (*ins, *outs) if s is not None)
        in_shapes, out_shapes = [s for s, _ in ins], [s for s, _ in outs]
        costs.append(NodeCost(node.name or f"{node.op_type}_{i}", node.op_type,
                              node_flops(node, in_shapes, out_shapes), nbytes, in_shapes, out_shapes))
    return costs


def totals(costs: list[NodeCost]) -> dict[str, int]:
    return {"flops": sum(c.flops for c in costs), "bytes": sum(c.bytes for c in costs)}


# ONNX Runtime's profiler names element types in its own words.
ORT_TYPE_BYTES = {"float": 4, "double": 8, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4,
                  "int16": 2, "uint16": 2, "int8": 1, "uint8": 1, "bool": 1}


def ort_profile_ops(profile: str | Path | list[dict], model: onnx.ModelProto | None = None) -> list[dict]:
    """Per-node costs of what ONNX Runtime actually ran, from its profile JSON
    (`SessionOptions.enable_profiling`): median kernel time over the runs, FLOPs and bytes from
    the shapes ORT recorded. ORT fuses and inserts nodes ("r_nchwc" for Conv+Relu,
    ReorderOutput), so nodes are taken as ORT names them; attributes that shapes cannot give
    (pool windows, Gemm transposes) come from `model`'s node of the same name, if any. The
    counts are of the work ORT ran: its blocked (NCHWc) kernels pad channels to the vector
    width, so a Conv can count more FLOPs here than in `node_costs`.
    Returns dicts for `chipbench.roofline.place_ops`: name, op_type, seconds, flops, bytes, calls."""
    import json

    events = json.loads(Path(profile).read_text()) if isinstance(profile, (str, Path)) else profile
    by_name = {n.name: n for n in model.graph.node} if model is not None else {}
    runs: dict[str, list[dict]] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            runs.setdefault(e["name"].removesuffix("_kernel_time"), []).append(e)
    ops = []
    for name, evs in runs.items():
        args = evs[0]["args"]
        shapes = {}
        for key in ("input_type_shape", "output_type_shape"):
            shapes[key] = [(tuple(s), ORT_TYPE_BYTES.get(t, 4)) for d in args.get(key, []) for t, s in d.items()]
        node = by_name.get(name) or helper.make_node(args["op_name"], [], [])
        if node.op_type != args["op_name"]:
            node = helper.make_node(args["op_name"], [], [])
        ins, outs = shapes["input_type_shape"], shapes["output_type_shape"]
        ops.append({
            "name": name,
            "op_type": args["op_name"],
            "seconds": float(np.median([e["dur"] for e in evs])) / 1e6,  # "dur" is in microseconds
            "flops": node_flops(node, [s for s, _ in ins], [s for s, _ in outs]),
            "bytes": sum(math.prod(s) * size for s, size in (*ins, *outs)),
            "calls": len(evs),
        })
    return ops
