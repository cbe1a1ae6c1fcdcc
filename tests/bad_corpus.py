"""The bad-input corpus: files a new user (or a hostile one) might hand to chipbench.

Plain builders that write into a folder; tests/test_bad_inputs.py drives every file through
the CLI. Broken models, hostile external data, mismatched input/expected arrays, a model with
markup in its name, dynamic-shape models and bad suite files.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper, helper, numpy_helper

OPSET = 17
XSS_NAME = "<img src=x onerror=alert(1)>"
PICKLE_MARKER = "PICKLE_RAN"


def _save(model, path: Path, check: bool = False) -> Path:
    """Write the model bytes as they are: no checker, no external-data rewriting."""
    if check:
        onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def _vi(name: str, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _model(nodes, inputs, outputs, initializer=(), opsets=(("", OPSET),), **kw):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializer))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets],
                              producer_name="chipbench-corpus", **kw)
    model.ir_version = 8
    return model


def matmul_relu_model(batch=1):
    """y = relu(x @ W), x: [batch, 8], W: [8, 4] (the corpus' good model)."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "W")
    return _model([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
                  [_vi("x", [batch, 8])], [_vi("y", [batch, 4])], [w])


def unary_model(op: str, shape, dtype=TensorProto.FLOAT):
    return _model([helper.make_node(op, ["x"], ["y"])], [_vi("x", shape, dtype)], [_vi("y", shape, dtype)])


# --- broken models ----------------------------------------------------------------------------

def broken_models(folder: Path) -> dict[str, Path]:
    """Files that are not (usable) ONNX models; every one must be refused with exit 2."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    good = matmul_relu_model()

    out["empty"] = folder / "empty.onnx"
    out["empty"].write_bytes(b"")
    out["random"] = folder / "random.onnx"
    out["random"].write_bytes(np.random.default_rng(1).bytes(4096))
    data = good.SerializeToString()
    out["truncated"] = folder / "truncated.onnx"
    out["truncated"].write_bytes(data[: len(data) // 2])
    out["nonmodel"] = folder / "nonmodel.onnx"  # a valid protobuf, but a TensorProto
    out["nonmodel"].write_bytes(numpy_helper.from_array(np.arange(100, dtype=np.float32), "t").SerializeToString())

    out["badop"] = _save(_model([helper.make_node("NoSuchOp", ["x"], ["y"])], [_vi("x", [1, 8])],
                                [_vi("y", [1, 8])]), folder / "badop.onnx")

    m = matmul_relu_model()
    m.opset_import[0].version = 999
    out["opset999"] = _save(m, folder / "opset999.onnx")
    m = matmul_relu_model()
    del m.opset_import[:]
    out["noopset"] = _save(m, folder / "noopset.onnx")

    cycle = _model([helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
                    helper.make_node("Identity", ["a"], ["y"])], [_vi("x", [1, 8])], [_vi("y", [1, 8])])
    out["cycle"] = _save(cycle, folder / "cycle.onnx")

    out["hugedim"] = _save(unary_model("Relu", [1, 1_000_000_000]), folder / "hugedim.onnx")
    out["hugedim1e15"] = _save(unary_model("Relu", [1, 10**15]), folder / "hugedim1e15.onnx")
    m = unary_model("Relu", [1, 8])
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = -5
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = -5
    out["negdim"] = _save(m, folder / "negdim.onnx")
    out["zerodim"] = _save(unary_model("Relu", [1, 0]), folder / "zerodim.onnx")
    return out


def custom_domain_model(path: Path) -> Path:
    """A valid model whose only op lives in a custom domain nobody implements."""
    m = _model([helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")], [_vi("x", [1, 8])],
               [_vi("y", [1, 8])], opsets=(("", OPSET), ("com.example", 1)))
    return _save(m, path)


def nan_log_model(path: Path) -> Path:
    """y = log(x): on standard-normal inputs about half the outputs are NaN on any right backend."""
    return _save(unary_model("Log", [1, 64]), path, check=True)


def inf_div0_model(path: Path) -> Path:
    """y = x / 0: every output is +-Inf (or NaN where x is 0) on any right backend."""
    z = numpy_helper.from_array(np.zeros((1, 64), np.float32), "Z")
    m = _model([helper.make_node("Div", ["x", "Z"], ["y"])], [_vi("x", [1, 64])], [_vi("y", [1, 64])], [z])
    return _save(m, path, check=True)


# --- hostile external data --------------------------------------------------------------------

def _externalize(tensor, location: str, length: int | None = None, offset: int | None = None) -> None:
    kv = {"location": location}
    if offset is not None:
        kv["offset"] = str(offset)
    if length is not None:
        kv["length"] = str(length)
    external_data_helper.set_external_data(tensor, **kv)
    tensor.data_location = TensorProto.EXTERNAL
    for f in ("raw_data", "float_data", "int32_data", "int64_data"):
        tensor.ClearField(f)


def _ext_model(folder: Path, location: str, prepare=None, length: int | None = None) -> Path:
    """The good model with W (8x4 float32 = 128 bytes) stored at `location`."""
    folder.mkdir(parents=True, exist_ok=True)
    m = matmul_relu_model()
    _externalize(m.graph.initializer[0], location, length=length)
    if prepare:
        prepare(folder)
    return _save(m, folder / "model.onnx")


def _ext_uint8(name: str, location: str, n: int = 16):
    t = helper.make_tensor(name, TensorProto.UINT8, [n], vals=b"\0" * n, raw=True)
    _externalize(t, location, offset=0, length=n)
    return t


def _relink(path: Path, target: str) -> None:
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)


def hostile_external_data(folder: Path) -> dict[str, Path]:
    """Models whose external data leave their folder, lie about their size, or are not files.
    Each is `<case>/.../model.onnx`; each must be refused with exit 2."""
    out: dict[str, Path] = {}
    far = "../" * 9 + "etc/passwd"
    out["ext_traversal"] = _ext_model(folder / "ext_traversal" / "a" / "b", "../../etc/passwd")
    out["ext_traversal_real"] = _ext_model(folder / "ext_traversal_real" / "a" / "b", far)
    out["ext_abs"] = _ext_model(folder / "ext_abs", "/etc/passwd")
    out["ext_symlink"] = _ext_model(folder / "ext_symlink", "w.bin", lambda d: _relink(d / "w.bin", "/etc/passwd"))
    out["ext_dirlink"] = _ext_model(folder / "ext_dirlink", "sub/passwd", lambda d: _relink(d / "sub", "/etc"))
    short = lambda d: (d / "w.bin").write_bytes(b"\0" * 10)  # noqa: E731 - W needs 128 bytes
    out["ext_short"] = _ext_model(folder / "ext_short", "w.bin", short, length=128)
    out["ext_short_nolen"] = _ext_model(folder / "ext_short_nolen", "w.bin", short)
    out["ext_missing"] = _ext_model(folder / "ext_missing", "nothere.bin")
    out["ext_devzero"] = _ext_model(folder / "ext_devzero", "/dev/zero")

    def fifo(d: Path) -> None:
        p = d / "w.bin"
        if p.exists() or p.is_symlink():
            p.unlink()
        os.mkfifo(p)
    out["ext_fifo"] = _ext_model(folder / "ext_fifo", "w.bin", fifo)

    # A Constant inside a model-local function, reading a file far outside the folder.
    d = folder / "ext_in_function" / "a" / "b"
    const = helper.make_node("Constant", [], ["c"], value=_ext_uint8("leak", far))
    fn = helper.make_function("local.leak", "F", ["x"], ["y"], [
        const, helper.make_node("Cast", ["c"], ["cf"], to=TensorProto.FLOAT), helper.make_node("Add", ["x", "cf"], ["y"]),
    ], opset_imports=[helper.make_opsetid("", OPSET)])
    m = _model([helper.make_node("F", ["x"], ["y"], domain="local.leak")], [_vi("x", [16])], [_vi("y", [16])],
               opsets=(("", OPSET), ("local.leak", 1)), functions=[fn])
    out["ext_in_function"] = _save(m, d / "model.onnx")

    # A sparse initializer whose values live far outside the folder.
    d = folder / "ext_sparse" / "a" / "b"
    idx = numpy_helper.from_array(np.arange(16, dtype=np.int64), "sp_idx")
    sparse = helper.make_sparse_tensor(_ext_uint8("sp", far), idx, [16])
    m = _model([helper.make_node("Add", ["x", "sp"], ["y"])], [_vi("x", [16], TensorProto.UINT8)],
               [_vi("y", [16], TensorProto.UINT8)])
    m.graph.sparse_initializer.extend([sparse])
    out["ext_sparse"] = _save(m, d / "model.onnx")

    # A plain Constant node (in the main graph) with external data outside.
    d = folder / "ext_in_constant" / "a" / "b"
    m = _model([helper.make_node("Constant", [], ["c"], value=_ext_uint8("leak", far)),
                helper.make_node("Cast", ["c"], ["cf"], to=TensorProto.FLOAT), helper.make_node("Add", ["x", "cf"], ["y"])],
               [_vi("x", [16])], [_vi("y", [16])])
    out["ext_in_constant"] = _save(m, d / "model.onnx")
    return out


# --- input and expected arrays ----------------------------------------------------------------

class _Evil:
    """Unpickling this runs `touch <marker>`: a loader must never unpickle user data."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def good_model(folder: Path) -> Path:
    """The static x:[1,8] -> y:[1,4] model the arrays below are meant for."""
    return _save(matmul_relu_model(), folder / "good.onnx", check=True)


def static_relu_model(folder: Path) -> Path:
    """Relu with a static x:[1,8]: any shape runs, so a wrong shape is only caught by checking."""
    return _save(unary_model("Relu", [1, 8]), folder / "relu_1x8.onnx", check=True)


def arrays(folder: Path) -> dict[str, Path]:
    """Input and expected-output files for good.onnx (and relu_1x8.onnx)."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    x = np.random.default_rng(2).standard_normal((1, 8)).astype(np.float32)

    def npz(name, **arrs):
        out[name] = folder / f"{name}.npz"
        np.savez(out[name], **arrs)

    npz("in_good", x=x)
    npz("in_wrongname", foo=x)
    npz("in_twowrong", foo=x, bar=x)
    npz("in_wrongrank", x=np.zeros((1, 8, 1), np.float32))
    npz("in_wrongdtype", x=x.astype(np.float64))
    npz("in_int", x=np.arange(8, dtype=np.int64).reshape(1, 8))
    npz("in_wrongshape", x=np.zeros((1, 5), np.float32))
    npz("in_wrongbatch", x=np.zeros((2, 8), np.float32))
    out["in_garbage"] = folder / "in_garbage.npz"
    out["in_garbage"].write_bytes(b"PK\x03\x04 not really a zip")
    out["in_pickle"] = folder / "in_pickle.npy"
    np.save(out["in_pickle"], np.array([{"a": 1}], dtype=object), allow_pickle=True)
    out["in_evilpickle"] = folder / "in_evilpickle.npy"
    with open(out["in_evilpickle"], "wb") as f:  # an object-array header, then a hostile pickle
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": (1,)})
        pickle.dump([_Evil(folder / PICKLE_MARKER)], f)

    w = numpy_helper.to_array(matmul_relu_model().graph.initializer[0])
    y = np.maximum(x @ w, 0).astype(np.float32)
    out["exp_good"] = folder / "exp_good.npy"
    np.save(out["exp_good"], y)
    out["exp_wrongshape"] = folder / "exp_wrongshape.npy"
    np.save(out["exp_wrongshape"], np.zeros((1, 5), np.float32))
    out["exp_good_shape_wrong_values"] = folder / "exp_good_shape_wrong_values.npy"
    np.save(out["exp_good_shape_wrong_values"], (y + 1).astype(np.float32))
    return out


# --- names and shapes -------------------------------------------------------------------------

def xss_model(folder: Path) -> Path:
    """A valid model whose file name is markup."""
    return _save(matmul_relu_model(), folder / f"{XSS_NAME}.onnx", check=True)


def dynamic_models(folder: Path) -> dict[str, Path]:
    """Relu on x:[N, F] (two dynamic dims) and x:[N, 8] (a dynamic batch only)."""
    out = {}
    for name, shape in (("dyn", ["N", "F"]), ("dynlead", ["N", 8])):
        out[name] = _save(unary_model("Relu", shape), folder / f"{name}.onnx", check=True)
    return out


# --- suites -----------------------------------------------------------------------------------

SUITES = {
    "malformed": '[[cells]\nworkload = "tiny-mlp"\nbackend = ["null"\n',
    "unknown_workload": '[[cells]]\nworkload = "no-such-workload"\nbackend = "null"\n',
    "unknown_backend": '[[cells]]\nworkload = "tiny-mlp"\nbackend = "no-such-backend"\n',
    "cells_not_table": "cells = 5\n",
    "defaults_string": 'defaults = "fast"\n[[cells]]\nworkload = "tiny-mlp"\nbackend = "null"\n',
    "timeout_string": ('[[cells]]\nworkload = "tiny-mlp"\nbackend = "null"\ntimeout_s = "soon"\n'
                       "min_duration_s = 0.05\nmin_count = 5\n"),
    "unknown_key": '[[cells]]\nworkload = "tiny-mlp"\nbackend = "null"\nturbo = true\n',
    "empty": "",
    "workload_int": '[[cells]]\nworkload = 42\nbackend = "null"\n',
}


def suites(folder: Path) -> dict[str, Path]:
    """Suite files that must each be refused (exit 2, one line naming the file)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, text in SUITES.items():
        out[name] = folder / f"{name}.toml"
        out[name].write_text(text)
    out["binary"] = folder / "binary.toml"
    out["binary"].write_bytes(b"\xff\xfe\x00garbage\x80\x81")
    out["adir"] = folder / "adir.toml"
    out["adir"].mkdir(exist_ok=True)
    return out


def build_all(folder: Path) -> dict[str, Path]:
    """The whole corpus under `folder`, by case name."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {**broken_models(folder), **hostile_external_data(folder), **arrays(folder),
           **dynamic_models(folder), **{f"suite_{k}": v for k, v in suites(folder / "suites").items()}}
    out["customdomain"] = custom_domain_model(folder / "customdomain.onnx")
    out["nan_log"] = nan_log_model(folder / "nan_log.onnx")
    out["inf_div0"] = inf_div0_model(folder / "inf_div0.onnx")
    out["good"] = good_model(folder)
    out["relu_1x8"] = static_relu_model(folder)
    out["xss"] = xss_model(folder)
    return out
