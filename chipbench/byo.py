"""Bring your own ONNX model: validate it, fix its shapes, make inputs and a reference.

Models from the wild are loaded defensively: external data must stay inside the model's
folder; initializers that are also graph inputs are weights, not inputs; dynamic dimensions
come from `--input NAME:SHAPE[:DTYPE]` (a leading dynamic dim defaults to the batch).
The reference is ONNX Runtime CPU on the same inputs, or the expected outputs given.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chipbench.backends.base import Arrays, ModelSource
from chipbench.paths import atomic_write_bytes, cache_dir

_DTYPES = {"float32": np.float32, "float16": np.float16, "float64": np.float64, "int64": np.int64,
           "int32": np.int32, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}


class ModelError(ValueError):
    """The model file cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str | None = None


def parse_input_spec(text: str) -> InputSpec:
    """`NAME:1x3x224x224[:float32]` (also `1,3,224,224`)."""
    match = re.fullmatch(r"([^:]+):(\d+(?:[x,]\d+)*)(?::(\w+))?", text.strip())
    if not match:
        raise ModelError(f"--input '{text}': expected NAME:SHAPE[:DTYPE], e.g. images:1x3x224x224:float32")
    name, shape, dtype = match.groups()
    if dtype is not None and dtype not in _DTYPES:
        raise ModelError(f"--input '{text}': unknown dtype '{dtype}' (known: {', '.join(_DTYPES)})")
    return InputSpec(name, tuple(int(d) for d in re.split("[x,]", shape)), dtype)


def load_model_safely(path: Path):
    """Load an ONNX model, refusing external data that points outside its folder."""
    import onnx
    from onnx import external_data_helper

    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from None
    base = path.parent.resolve()
    for tensor in external_data_helper._get_all_tensors(model):  # noqa: SLF001 - the only walker onnx offers
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = external_data_helper.ExternalDataInfo(tensor)
        target = (base / info.location).resolve()
        if Path(info.location).is_absolute() or not target.is_relative_to(base):
            raise ModelError(f"{path}: external data '{info.location}' of tensor '{tensor.name}' lies outside the model's folder")
        if not target.is_file():
            raise ModelError(f"{path}: external data file '{info.location}' of tensor '{tensor.name}' is missing")
    external_data_helper.load_external_data_for_model(model, str(base))
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelError(f"{path}: invalid ONNX model ({_first_line(exc)})") from None
    return model


def graph_inputs(model) -> list:
    """Real inputs: graph inputs that are not also initializers (old exporters list weights too)."""
    weights = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in weights]


def resolve_shapes(model, path: Path, specs: dict[str, InputSpec], batch: int) -> dict[str, tuple[tuple[int, ...], str]]:
    from onnx import helper

    resolved = {}
    for inp in graph_inputs(model):
        ttype = inp.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(ttype.elem_type).name
        if inp.name in specs:
            spec = specs[inp.name]
            resolved[inp.name] = (spec.shape, spec.dtype or dtype)
            continue
        shape = []
        for axis, dim in enumerate(ttype.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                shape.append(dim.dim_value)
            elif axis == 0:
                shape.append(batch)
            else:
                label = dim.dim_param or "?"
                raise ModelError(f"{path}: input '{inp.name}' dim {axis} is dynamic ('{label}'); "
                                 f"give --input {inp.name}:SHAPE")
        resolved[inp.name] = (tuple(shape), dtype)
    unknown = set(specs) - set(resolved)
    if unknown:
        raise ModelError(f"{path}: no graph input named {', '.join(sorted(unknown))} "
                         f"(inputs: {', '.join(resolved) or 'none'})")
    return resolved


def make_inputs(shapes: dict[str, tuple[tuple[int, ...], str]], seed: int) -> Arrays:
    rng = np.random.default_rng(seed)
    out = {}
    for name, (shape, dtype) in shapes.items():
        if np.issubdtype(np.dtype(dtype), np.floating):
            out[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == "bool":
            out[name] = rng.integers(0, 2, shape).astype(bool)
        else:  # ids and indices: small non-negative values are valid for any table
            out[name] = rng.integers(0, 2, shape).astype(dtype)
    return out


def static_copy(model, shapes: dict[str, tuple[tuple[int, ...], str]]) -> Path:
    """The model with concrete input shapes, inlined weights and weights no longer listed as
    inputs (TVM's importer rejects that old-exporter habit), cached by its content."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    real = graph_inputs(model)
    del model.graph.input[:]
    model.graph.input.extend(real)
    model.ir_version = max(model.ir_version, 4)  # from IR 4 on, initializers need not be inputs
    for inp in graph_inputs(model):
        dims = inp.type.tensor_type.shape.dim
        shape = shapes[inp.name][0]
        if len(dims) != len(shape) and len(dims) > 0:
            raise ModelError(f"input '{inp.name}' has rank {len(dims)}, --input gave {len(shape)}")
        del dims[:]
        for d in shape:
            inp.type.tensor_type.shape.dim.add().dim_value = d
    data = model.SerializeToString()
    digest = hashlib.sha256(data).hexdigest()
    path = cache_dir("onnx-byo", digest[:24]) / "model.onnx"
    if not path.exists():
        atomic_write_bytes(path, data)
    return path


def load_arrays(path: Path, names: list[str], prefix: str) -> Arrays:
    """Arrays for `names` from .npz (by name, else arr_i in order), .npy (one array), an ONNX
    TensorProto .pb, or a test-data folder of `{prefix}_N.pb` files (the ONNX model zoo layout)."""
    import onnx.numpy_helper
    from onnx import TensorProto

    def pb(file: Path) -> tuple[str, np.ndarray]:
        tensor = TensorProto.FromString(file.read_bytes())
        return tensor.name, onnx.numpy_helper.to_array(tensor)

    if not path.exists():
        raise ModelError(f"{path}: no such file or folder")
    try:
        if path.is_dir():
            files = sorted(path.glob(f"{prefix}_*.pb"), key=lambda f: int(f.stem.split("_")[-1]))
            found = [pb(f) for f in files]
        elif path.suffix == ".npz":
            with np.load(path) as data:
                found = [(n, data[n]) for n in data.files]
        elif path.suffix == ".npy":
            found = [("", np.load(path))]
        elif path.suffix == ".pb":
            found = [pb(path)]
        else:
            raise ModelError(f"{path}: arrays must be .npz, .npy, .pb or a folder of {prefix}_N.pb")
    except (ValueError, OSError) as exc:
        raise ModelError(f"{path}: cannot read arrays ({_first_line(exc)})") from None
    by_name = {n: a for n, a in found if n}
    if all(n in by_name for n in names):
        return {n: by_name[n] for n in names}
    if len(found) == len(names):  # unnamed or differently named: take them in order
        return {n: a for n, (_, a) in zip(names, found)}
    raise ModelError(f"{path}: holds {len(found)} array(s), the model needs {', '.join(names)}")


def ort_reference(path: Path, inputs: Arrays) -> Arrays:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def prepare_model(model_path: str, input_specs: list[str], expected: str | None,
                  input_data: str | None, batch: int, seed: int):
    """Everything a cell needs for a foreign model; returns (Prepared, what the reference is)."""
    from chipbench.prepare import Prepared, sha256_file

    path = Path(model_path)
    model = load_model_safely(path)
    names = [i.name for i in graph_inputs(model)]
    output_names = [o.name for o in model.graph.output]
    if input_data:
        inputs = load_arrays(Path(input_data), names, "input")
        specs = {n: InputSpec(n, a.shape, a.dtype.name) for n, a in inputs.items()}
    else:
        specs = {s.name: s for s in map(parse_input_spec, input_specs)}
    shapes = resolve_shapes(model, path, specs, batch)
    static = static_copy(model, shapes)
    if not input_data:
        if expected:
            raise ModelError(f"{expected}: expected outputs need the inputs they came from (--input-data)")
        inputs = make_inputs(shapes, seed)
    if expected:
        reference = load_arrays(Path(expected), output_names, "output")
        reference_from = f"expected outputs {expected}"
    else:
        reference = ort_reference(static, inputs)
        reference_from = "onnxruntime CPU"
    source = ModelSource(name=path.stem, onnx_path=static, input_names=tuple(shapes),
                         output_names=tuple(output_names), build_torch=None)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    prepared = Prepared(source, inputs, reference, sha256_file(static), f"given ({model.producer_name or 'unknown'})", opset)
    return prepared, reference_from


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(exc).__name__

