"""Bring your own ONNX model: plan its inputs, make them (or check the user's), and a reference.

Everything here is checked before any cell runs (`check_model_cell`), and checked again the
same way inside the cell (`prepare_model`), so a bad input is an exit-2 error, never a failed
cell. The model file itself is loaded by `chipbench.modelfile`.

Shapes: a static dim is what the graph declares; a leading dynamic dim is the batch; other
dynamic dims come from `--input NAME=SHAPE[:DTYPE]` (or `NAME:SHAPE[:DTYPE]`). With
`--input-data` the arrays decide, and must agree with the graph's names, dtypes, ranks and
static dims. The batch recorded is what ran: the size of the leading dynamic dim, or 1 for a
model whose dims are all fixed (one query, one invocation) unless `--batch` names that fixed
leading dim. The reference is ONNX Runtime CPU on the same inputs, or the expected outputs.
"""

from __future__ import annotations

import hashlib
import math
import re
import shlex
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chipbench.backends.base import Arrays, ModelSource
from chipbench.errors import first_line, one_line
from chipbench.modelfile import ModelError, NUMPY_DTYPES, graph_inputs, load_model_safely, tensor_dtype
from chipbench.paths import atomic_write_bytes, cache_dir
from chipbench.prepare import sha256_file

__all__ = ["ModelError", "InputSpec", "InputPlan", "parse_input_spec", "load_model_safely", "plan_inputs",
           "check_model_cell", "prepare_model", "make_inputs", "load_arrays", "graph_precision"]

_DTYPE_NAMES = sorted(set(NUMPY_DTYPES.values()))
# Op inputs (by position) that are shapes, sizes, axes or counts: random values cannot be right.
_SHAPE_INPUTS = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2),
    "Slice": (1, 2, 3, 4), "Resize": (1, 2, 3), "Upsample": (1,), "TopK": (1,), "OneHot": (1,),
    "Pad": (1, 3), "Squeeze": (1,), "Unsqueeze": (1,), "Split": (1,), "CenterCropPad": (1, 2),
    "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,),
    "ReduceL1": (1,), "ReduceL2": (1,), "ReduceLogSum": (1,), "ReduceLogSumExp": (1,),
    "ReduceSumSquare": (1,), "Trilu": (1,),
}
# Ops that pass values through unchanged in meaning (a shape stays a shape).
_PASS_THROUGH = {"Cast", "Identity", "Concat", "Unsqueeze", "Squeeze", "Flatten", "Gather", "Slice", "Abs", "Neg"}
# A cell holds the inputs, the reference, the backend's outputs and the backend's own copies.
CELL_COPIES = 5


@dataclass(frozen=True)
class InputSpec:
    """A shape (and optionally a dtype) for one graph input, from `--input`."""

    name: str
    shape: tuple[int, ...]
    dtype: str | None = None


@dataclass(frozen=True)
class InputPlan:
    """What the cells will feed the model: name -> (shape, numpy dtype), the batch that runs
    (samples per query), and notes for the record."""

    shapes: dict[str, tuple[tuple[int, ...], str]]
    batch: int
    notes: tuple[str, ...] = field(default=())


def parse_input_spec(text: str) -> InputSpec:
    """`NAME=1x3x224x224[:float32]` (any ONNX name, `input_1:0` too) or `NAME:1x3x224x224[:float32]`;
    dims may also be separated by commas. Raises ModelError naming the flag."""
    value = text.strip()
    name, sep, rest = value.rpartition("=")
    if not sep:
        match = re.fullmatch(r"(.+?):(\d+(?:[x,]\d+)*)(?::(\w+))?", value)
        if not match:
            raise ModelError(f"--input '{text}': expected NAME=SHAPE[:DTYPE] or NAME:SHAPE[:DTYPE], "
                             f"e.g. images=1x3x224x224:float32")
        name, shape, dtype = match.groups()
    else:
        match = re.fullmatch(r"(\d+(?:[x,]\d+)*)?(?::(\w+))?", rest)
        if not name or not match:
            raise ModelError(f"--input '{text}': expected NAME=SHAPE[:DTYPE], e.g. images=1x3x224x224:float32")
        shape, dtype = match.groups()
    dims = tuple(int(d) for d in re.split("[x,]", shape)) if shape else ()
    if any(d < 1 for d in dims):
        raise ModelError(f"--input '{text}': every dim must be at least 1")
    if dtype is not None and dtype not in _DTYPE_NAMES:
        raise ModelError(f"--input '{text}': unknown dtype '{dtype}' (known: {', '.join(_DTYPE_NAMES)})")
    return InputSpec(name, dims, dtype)


def _declared(value: Any) -> tuple[Any, ...] | None:
    """A value's dims as the graph declares them: int (static), str (named dynamic), None
    (unnamed dynamic); None for an unknown rank."""
    ttype = value.type.tensor_type
    if not ttype.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in ttype.shape.dim)


def _hint(name: str, dims: tuple[Any, ...], batch: int) -> str:
    """An --input flag that works when pasted: dynamic dims filled (the batch, else 1)."""
    shape = "x".join(str(d) if isinstance(d, int) and d > 0 else str(batch if i == 0 else 1)
                     for i, d in enumerate(dims))
    return f"--input {shlex.quote(f'{name}={shape}')}"


def plan_inputs(model: Any, path: Path, specs: dict[str, InputSpec], batch: int | None,
                default_batch: int = 1, data: Arrays | None = None, data_file: Path | None = None) -> InputPlan:
    """Shapes and the batch for every graph input, checked against the graph (ModelError).

    `batch` is what the user asked for (`--batch`), `default_batch` what the scenario runs when
    nothing was asked; `data` are the `--input-data` arrays when given (read from `data_file`)."""
    holds = f"--input-data {data_file} holds" if data_file else "--input-data holds"
    inputs = graph_inputs(model)
    by_name = {i.name: i for i in inputs}
    for name in set(specs) | set(data or {}):
        if name not in by_name:
            raise ModelError(f"{path}: no graph input named '{name}' (inputs: {', '.join(by_name) or 'none'})")
    shapes: dict[str, tuple[tuple[int, ...], str]] = {}
    for value in inputs:
        name, dtype, dims = value.name, tensor_dtype(path, value, "input"), _declared(value)
        for axis, d in enumerate(dims or ()):
            if isinstance(d, int) and d < 0:
                raise ModelError(f"{path}: input '{name}' declares dim {axis} as {d}")
            if d == 0:
                raise ModelError(f"{path}: input '{name}' has a zero-sized dim {axis} "
                                 f"(shape {'x'.join(map(str, dims))}): nothing to compute")
        if data is not None:
            given, source = data[name].shape, holds
            if data[name].dtype.name != dtype:
                raise ModelError(f"{path}: input '{name}' is {dtype} in the graph; {holds} {data[name].dtype.name}")
        elif name in specs:
            given, source = specs[name].shape, "--input gave"
            if specs[name].dtype not in (None, dtype):
                raise ModelError(f"{path}: input '{name}' is {dtype} in the graph; --input gave {specs[name].dtype}")
        else:
            if dims is None:
                raise ModelError(f"{path}: input '{name}' has no declared shape; give it, e.g. --input "
                                 f"{shlex.quote(name + '=1x8')}")
            for axis, d in enumerate(dims[1:], 1):
                if not isinstance(d, int):
                    raise ModelError(f"{path}: input '{name}' dim {axis} is dynamic ('{d or '?'}'); give its size, "
                                     f"e.g. {_hint(name, dims, batch or default_batch)}")
            given = tuple(d if isinstance(d, int) else (batch or default_batch) for d in dims)
            source = "planned"
        if dims is not None:
            if len(given) != len(dims):
                raise ModelError(f"{path}: input '{name}' has rank {len(dims)} "
                                 f"({'x'.join(str(d or '?') for d in dims) or 'a scalar'}); {source} rank {len(given)} "
                                 f"({'x'.join(map(str, given)) or 'a scalar'})")
            for axis, (d, g) in enumerate(zip(dims, given)):
                if isinstance(d, int) and d != g:
                    raise ModelError(f"{path}: input '{name}' dim {axis} is fixed at {d} in the graph; "
                                     f"{source} shape {'x'.join(map(str, given))}")
        if any(g == 0 for g in given):
            raise ModelError(f"{path}: input '{name}' would have a zero-sized dim (shape "
                             f"{'x'.join(map(str, given))}): nothing to compute")
        shapes[name] = (tuple(int(g) for g in given), dtype)
    planned_batch, notes = _batch_that_runs(path, inputs, shapes, batch, default_batch)
    if data is None:
        _refuse_generated_shape_values(path, model, shapes)
    _refuse_what_does_not_fit(path, model, shapes)
    return InputPlan(shapes, planned_batch, tuple(notes))


def _batch_that_runs(path: Path, inputs: list, shapes: dict, batch: int | None,
                     default_batch: int) -> tuple[int, list[str]]:
    """Samples per query: the size bound to a leading dynamic dim, else 1 (a fixed model)."""
    dynamic = [v.name for v in inputs if _declared(v) and not isinstance(_declared(v)[0], int)]
    if dynamic:
        sizes = {shapes[n][0][0] for n in dynamic}
        size = shapes[dynamic[0]][0][0]
        if batch is not None and batch != size:
            raise ModelError(f"{path}: --batch {batch}, but input '{dynamic[0]}' gets {size} samples")
        notes = [] if len(sizes) == 1 else [f"leading dynamic dims differ ({sorted(sizes)}); batch taken from '{dynamic[0]}'"]
        return size, notes
    first = next(iter(shapes.items()), None)
    fixed = first[1][0][0] if first and first[1][0] else None
    if batch is not None and batch != 1 and batch != fixed:
        raise ModelError(f"{path}: every input's dims are fixed (input '{first[0]}' has leading dim {fixed}): "
                         f"the model cannot run --batch {batch}; export it with a dynamic batch dim")
    if batch is not None and batch == fixed:
        return batch, [f"batch {batch}: the fixed leading dim of input '{first[0]}', as --batch says"]
    notes = [] if default_batch == 1 else [
        f"the model's dims are fixed: each query is one invocation (batch 1), not the scenario's batch {default_batch}"]
    return 1, notes


def _refuse_generated_shape_values(path: Path, model: Any, shapes: dict) -> None:
    """Random values cannot stand in for an input that becomes a shape, axis or count."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for pos, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, pos))
    for start in shapes:
        seen, todo = {start}, [start]
        while todo:
            tensor = todo.pop()
            for node, pos in consumers.get(tensor, []):
                if pos in _SHAPE_INPUTS.get(node.op_type, ()):
                    where = f"{node.op_type} node '{node.name}'" if node.name else f"a {node.op_type} node"
                    raise ModelError(f"{path}: input '{start}' becomes input {pos} of {where} (a shape, size or "
                                     f"axis): generated values cannot be right; give real ones with --input-data")
                if node.op_type in _PASS_THROUGH and (node.op_type not in ("Gather", "Slice") or pos == 0):
                    for out in node.output:
                        if out and out not in seen:
                            seen.add(out)
                            todo.append(out)


def _refuse_what_does_not_fit(path: Path, model: Any, shapes: dict) -> None:
    import psutil

    nbytes = sum(math.prod(s) * np.dtype(d).itemsize for s, d in shapes.values())
    for value in model.graph.output:
        dims = _declared(value)
        if dims and all(isinstance(d, int) and d > 0 for d in dims):
            nbytes += math.prod(dims) * np.dtype(NUMPY_DTYPES.get(value.type.tensor_type.elem_type, "float32")).itemsize
    available = psutil.virtual_memory().available
    if CELL_COPIES * nbytes > available:
        raise ModelError(f"{path}: inputs and outputs take {nbytes / 2**30:.3g} GiB; a cell holds about "
                         f"{CELL_COPIES}x that, more than the {available / 2**30:.3g} GiB this machine has free")


def graph_precision(model: Any) -> str:
    """The precision a graph computes in, as given: int8 when it holds quantize/dequantize or
    integer-arithmetic ops, fp16 (bf16) when every floating-point tensor it declares is float16
    (bfloat16), else fp32."""
    quantized = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                 "MatMulInteger", "DynamicQuantizeLinear"}
    if any(n.op_type in quantized for n in model.graph.node):
        return "int8"
    floats = {t.data_type for t in model.graph.initializer if t.data_type in (1, 10, 11, 16)}
    for value in list(model.graph.input) + list(model.graph.output):
        elem = value.type.tensor_type.elem_type
        if elem in (1, 10, 11, 16):
            floats.add(elem)
    if floats == {10}:
        return "fp16"
    if floats == {16}:
        return "bf16"
    return "fp32"


def make_inputs(shapes: dict[str, tuple[tuple[int, ...], str]], seed: int) -> Arrays:
    """Seeded inputs: standard normal for floats, {0, 1} for bools, ids and indices (valid for
    any table), any rank including 0-d."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, (shape, dtype) in shapes.items():
        if np.issubdtype(np.dtype(dtype), np.floating):
            out[name] = np.asarray(rng.standard_normal(shape)).astype(dtype)
        else:
            out[name] = np.asarray(rng.integers(0, 2, shape)).astype(dtype)
    return out


def static_copy(model: Any, shapes: dict[str, tuple[tuple[int, ...], str]]) -> Path:
    """The model with concrete input shapes, inlined weights and weights no longer listed as
    inputs (TVM's importer rejects that old-exporter habit), cached by its content. Only
    dynamic dims are filled: `plan_inputs` has already refused a shape that disagrees."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    real = graph_inputs(model)
    del model.graph.input[:]
    model.graph.input.extend(real)
    model.ir_version = max(model.ir_version, 4)  # from IR 4 on, initializers need not be inputs
    for inp in model.graph.input:
        ttype = inp.type.tensor_type
        ttype.ClearField("shape")
        ttype.shape.SetInParent()  # a scalar keeps an empty (rank-0) shape
        for d in shapes[inp.name][0]:
            ttype.shape.dim.add().dim_value = d
    data = model.SerializeToString()
    digest = hashlib.sha256(data).hexdigest()
    path = cache_dir("onnx-byo", digest[:24]) / "model.onnx"
    if not path.exists():
        atomic_write_bytes(path, data)
    return path


def load_arrays(path: Path, names: list[str], what: str) -> Arrays:
    """Arrays for `names` from .npz (by name, or arr_0... in order as np.savez names them), .npy
    (one array, for a model with one such value), an ONNX TensorProto .pb, or a test-data folder
    of `{input|output}_N.pb` files (the ONNX model zoo layout). Pickled objects are never loaded.
    `what` is "input" or "output". Raises ModelError naming the file."""
    import onnx.numpy_helper
    from onnx import TensorProto

    def pb(file: Path) -> tuple[str, np.ndarray]:
        tensor = TensorProto.FromString(file.read_bytes())
        return tensor.name, onnx.numpy_helper.to_array(tensor)

    if not path.exists():
        raise ModelError(f"{path}: no such file or folder")
    try:
        if path.is_dir():
            files = sorted(path.glob(f"{what}_*.pb"), key=lambda f: int(f.stem.split("_")[-1])
                           if f.stem.split("_")[-1].isdigit() else 1 << 30)
            if not files:
                raise ModelError(f"{path}: no {what}_N.pb files in this folder")
            found = [pb(f) for f in files]
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                found = [(n, data[n]) for n in data.files]
        elif path.suffix == ".npy":
            found = [("", np.load(path, allow_pickle=False))]
        elif path.suffix == ".pb":
            found = [pb(path)]
        else:
            raise ModelError(f"{path}: arrays must be .npz, .npy, .pb or a folder of {what}_N.pb")
    except ModelError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError, TypeError) as exc:
        message = first_line(exc)
        if "allow_pickle" in message:
            message = "it holds Python objects (a pickle), which are never loaded"
        raise ModelError(f"{path}: cannot read arrays ({message})") from None
    except Exception as exc:  # protobuf's DecodeError
        raise ModelError(f"{path}: cannot read arrays ({first_line(exc)})") from None
    for name, array in found:
        if array.dtype.name not in _DTYPE_NAMES:
            raise ModelError(f"{path}: array '{name or 0}' has dtype {array.dtype}, not a tensor type "
                             f"(supported: {', '.join(_DTYPE_NAMES)})")
    by_name = {n: a for n, a in found if n}
    if set(by_name) == set(names) and len(found) == len(names):
        return {n: by_name[n] for n in names}
    positional = all(not n or n == f"arr_{i}" for i, (n, _) in enumerate(found))
    if (positional or path.is_dir()) and len(found) == len(names):  # unnamed: taken in order
        return {n: a for n, (_, a) in zip(names, found)}
    holds = ", ".join(f"'{n}'" if n else "one unnamed array" for n, _ in found) or "nothing"
    raise ModelError(f"{path}: holds {holds}; the model's {what}s are {', '.join(repr(n) for n in names)}")


def check_expected(path: Path, model: Any, expected: Arrays, source: Path) -> None:
    """Expected outputs must have the graph's output ranks and static dims (ModelError)."""
    for value in model.graph.output:
        dims, got = _declared(value), expected[value.name].shape
        if dims is None:
            continue
        if len(dims) != len(got) or any(isinstance(d, int) and d > 0 and d != g for d, g in zip(dims, got)):
            shown = "x".join(str(d) if isinstance(d, int) and d > 0 else str(d or "?") for d in dims) or "a scalar"
            raise ModelError(f"{source}: expected output '{value.name}' has shape {'x'.join(map(str, got)) or 'a scalar'}, "
                             f"the graph declares {shown}")


@dataclass(frozen=True)
class ModelCheck:
    """What the CLI learned about a foreign model before any cell runs."""

    sha256: str  # of the model file as given
    precision: str  # what the graph computes in (graph_precision)


def check_model_cell(model_path: Path, input_specs: list[str], input_data: Path | None, expected: Path | None,
                     batch: int | None, default_batches: list[int]) -> ModelCheck:
    """Everything `prepare_model` will need, checked up front: ModelError on any problem."""
    specs = {s.name: s for s in map(parse_input_spec, input_specs)}
    model = load_model_safely(model_path)
    if expected is not None and input_data is None:
        raise ModelError(f"{expected}: expected outputs need the inputs they came from (--input-data)")
    data = load_arrays(input_data, [i.name for i in graph_inputs(model)], "input") if input_data else None
    if data is not None and specs:
        raise ModelError("--input and --input-data both give input shapes: give one of them")
    for default_batch in default_batches:
        plan_inputs(model, model_path, specs, batch, default_batch, data, input_data)
    if expected is not None:
        check_expected(model_path, model, load_arrays(expected, [o.name for o in model.graph.output], "output"),
                       expected)
    return ModelCheck(sha256_file(model_path), graph_precision(model))


def ort_reference(path: Path, inputs: Arrays) -> Arrays:
    """ONNX Runtime CPU outputs of the model at `path` on `inputs`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def _lifted_reference(static: Path, inputs: Arrays, model: Any, exc: Exception) -> tuple[Arrays | None, str]:
    """ONNX Runtime's outputs on the model converted to a newer opset when its refusal may be
    the opset's (chipbench.opset_lift), with the note saying so; (None, "") when not."""
    from chipbench.backends.base import get_backend
    from chipbench.opset_lift import convert, lift_target, model_opset

    opset = model_opset(model)
    target = lift_target(get_backend("ort-cpu"), opset, str(exc))
    if target is None or target == opset:
        return None, ""
    try:
        lifted = convert(ModelSource("reference", static, (), ()), target)
        return ort_reference(lifted.onnx_path, inputs), f"converted from opset {opset} to {target}"
    except Exception:
        return None, ""


def prepare_model(model_path: str, input_specs: list[str], expected: str | None, input_data: str | None,
                  batch: int | None, default_batch: int, seed: int, sha256: str | None = None):
    """Everything a cell needs for a foreign model; returns (Prepared, InputPlan, what the
    reference is). `sha256` (from the CLI's check) must still match the file."""
    from chipbench.prepare import Prepared

    path = Path(model_path)
    if sha256 is not None and sha256_file(path) != sha256:
        raise ModelError(f"{path}: the file changed since the sweep started (sha256 differs)")
    model = load_model_safely(path)
    specs = {s.name: s for s in map(parse_input_spec, input_specs)}
    data = load_arrays(Path(input_data), [i.name for i in graph_inputs(model)], "input") if input_data else None
    plan = plan_inputs(model, path, specs, batch, default_batch, data, Path(input_data) if input_data else None)
    static = static_copy(model, plan.shapes)
    inputs = data if data is not None else make_inputs(plan.shapes, seed)
    output_names = [o.name for o in model.graph.output]
    if expected:
        reference = load_arrays(Path(expected), output_names, "output")
        check_expected(path, model, reference, Path(expected))
        reference_from = f"expected outputs {Path(expected).name}"
    else:
        reference_from = "onnxruntime CPU"
        try:
            reference = ort_reference(static, inputs)
        except Exception as exc:  # the reference runtime refuses the model: an old opset is lifted, else say so
            reference, lifted = _lifted_reference(static, inputs, model, exc)
            if reference is None:
                raise ModelError(f"the reference (onnxruntime CPU) cannot run the model: {one_line(exc)}; "
                                 f"give --input-data and --expected instead") from None
            reference_from += f" on the model {lifted}"
    source = ModelSource(name=path.stem, onnx_path=static, input_names=tuple(plan.shapes),
                         output_names=tuple(output_names), build_torch=None, precision=graph_precision(model))
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    prepared = Prepared(source, inputs, reference, sha256_file(static), f"given ({model.producer_name or 'unknown'})",
                        opset)
    return prepared, plan, reference_from
