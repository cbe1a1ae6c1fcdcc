"""Loading an ONNX file from someone else, defensively.

What is refused, each with one line naming the file and the problem (ModelError):
- a path that is missing, a folder, or an empty file; bytes that are not an ONNX ModelProto;
- external data that lies outside the model's folder (absolute paths, `..`, symbolic links
  anywhere on the way), that is not a regular file (FIFOs, devices), or that is shorter than
  the tensor it holds (the missing byte range is named). Every tensor is checked: graph and
  subgraph initializers, sparse initializers, node attributes and model-local functions;
- an opset newer than the installed onnx knows, and whatever `onnx.checker` rejects;
- graph inputs and outputs that are not tensors (sequences, maps, optionals, sparse tensors)
  or whose element type numpy cannot hold (bfloat16, float8, strings, complex).
The external data is read into the model here, so nothing later opens a path from the file.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chipbench.errors import first_line


class ModelError(ValueError):
    """The model file cannot be used; the message names the file and the problem."""


# ONNX element type -> numpy dtype name, for the types every backend can exchange with numpy
NUMPY_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
                9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64"}


def load_model_safely(path: Path) -> Any:
    """The ModelProto of `path` with its external data read in, checked as the module doc says."""
    import onnx

    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such model file")
    if not path.is_file():
        raise ModelError(f"{path}: not a model file (a folder or a device)")
    data = path.read_bytes()
    if not data:
        raise ModelError(f"{path}: empty file, not an ONNX model")
    try:
        model = onnx.ModelProto.FromString(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelError(f"{path}: not an ONNX model (protobuf could not be parsed: {first_line(exc)})") from None
    if not model.HasField("graph") or not model.graph.output:
        raise ModelError(f"{path}: not an ONNX model (no graph with outputs)")
    base = path.parent.resolve()
    for tensor in all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            _read_external(path, base, tensor)
    _check_opsets(path, model)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        # the checker's message spans lines; its cause ends where the context dump begins
        cause = " ".join(str(exc).split("==> Context")[0].split())[:300] or type(exc).__name__
        raise ModelError(f"{path}: invalid ONNX model ({cause})") from None
    for role, values in (("input", graph_inputs(model)), ("output", model.graph.output)):
        for value in values:
            tensor_dtype(path, value, role)
    return model


def all_tensors(model: Any) -> Iterator[Any]:
    """Every TensorProto a model holds: initializers and sparse initializers of the graph and of
    every subgraph, tensor-valued node attributes, and the same inside model-local functions."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node)


def _graph_tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: Any) -> Iterator[Any]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        for sparse in ([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []) + list(attr.sparse_tensors):
            yield sparse.values
            yield sparse.indices
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for g in attr.graphs:
            yield from _graph_tensors(g)


def _read_external(path: Path, base: Path, tensor: Any) -> None:
    """Check one external tensor's file and read its bytes into the tensor."""
    import onnx

    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    what = f"external data '{location}' of tensor '{tensor.name}'"
    if not location or os.path.isabs(location) or Path(location).drive:
        raise ModelError(f"{path}: {what} lies outside the model's folder (an absolute path)")
    target, link = base, None
    for part in Path(location).parts:  # no symbolic link anywhere on the way, no way out
        target = target / part
        if link is None and target.is_symlink():
            link = target.relative_to(base)
    if not target.resolve().is_relative_to(base):
        via = f" (through the symbolic link {link})" if link else ""
        raise ModelError(f"{path}: {what} lies outside the model's folder{via}")
    if link is not None:
        raise ModelError(f"{path}: {what} passes through a symbolic link ({link}); external data must be a plain file")
    try:
        st = target.stat()
    except FileNotFoundError:
        raise ModelError(f"{path}: {what} is missing") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelError(f"{path}: {what} is not a regular file")
    offset = int(info.get("offset", 0) or 0)
    length = int(info["length"]) if info.get("length") else _tensor_bytes(tensor)
    if offset < 0 or (length is not None and length < 0):
        raise ModelError(f"{path}: {what} has a negative offset or length")
    end = st.st_size if length is None else offset + length
    if end > st.st_size:
        raise ModelError(f"{path}: {what} is truncated: the tensor needs bytes {offset}-{end}, "
                         f"'{location}' has {st.st_size}")
    with open(target, "rb") as f:
        f.seek(offset)
        tensor.raw_data = f.read(end - offset)
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT


def _tensor_bytes(tensor: Any) -> int | None:
    """Bytes a tensor of this type and shape holds, where its element type has a fixed size."""
    from onnx import helper

    try:
        itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    if tensor.data_type == 8:  # strings have no fixed size
        return None
    return math.prod(tensor.dims) * itemsize


def _check_opsets(path: Path, model: Any) -> None:
    import onnx

    newest = onnx.defs.onnx_opset_version()
    default = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not default and model.ir_version >= 3:
        raise ModelError(f"{path}: imports no opset of the ONNX domain (every model must)")
    if default and max(default) > newest:
        raise ModelError(f"{path}: opset {max(default)} is newer than any this onnx "
                         f"{onnx.__version__} knows (newest: {newest})")


def graph_inputs(model: Any) -> list:
    """Real inputs: graph inputs that are not also initializers (old exporters list weights too)."""
    weights = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in weights]


def tensor_dtype(path: Path, value: Any, role: str) -> str:
    """The numpy dtype name of a graph input/output; ModelError when it is not a tensor numpy
    can hold (the message names the value and its ONNX type)."""
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise ModelError(f"{path}: {role} '{value.name}' is a {(kind or 'untyped').replace('_type', '')} "
                         f"({type_text(value.type)}), not a tensor: chipbench compares tensors only")
    elem = value.type.tensor_type.elem_type
    if elem not in NUMPY_DTYPES:
        raise ModelError(f"{path}: {role} '{value.name}' has element type {element_text(elem)}, which numpy cannot "
                         f"exchange with every backend (supported: {', '.join(sorted(set(NUMPY_DTYPES.values())))})")
    return NUMPY_DTYPES[elem]


def element_text(elem: int) -> str:
    """An ONNX element type as the ONNX spec writes it: float, bfloat16, string, float8e4m3fn."""
    from onnx import helper

    try:
        return helper.tensor_dtype_to_string(elem).removeprefix("TensorProto.").lower()
    except (KeyError, ValueError):
        return f"undefined ({elem})"


def type_text(type_proto: Any) -> str:
    """An ONNX type as the spec writes it: tensor(float), seq(tensor(float)), map(int64,tensor(float))."""
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        return f"tensor({element_text(type_proto.tensor_type.elem_type)})"
    if kind == "sparse_tensor_type":
        return f"sparse_tensor({element_text(type_proto.sparse_tensor_type.elem_type)})"
    if kind == "sequence_type":
        return f"seq({type_text(type_proto.sequence_type.elem_type)})"
    if kind == "optional_type":
        return f"optional({type_text(type_proto.optional_type.elem_type)})"
    if kind == "map_type":
        m = type_proto.map_type
        return f"map({element_text(m.key_type)},{type_text(m.value_type)})"
    return "undefined"
