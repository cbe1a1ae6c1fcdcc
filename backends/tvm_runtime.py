"""Load and run a TVM bundle with TVM's runtime only (the device's half of `tvm_export.py`).

Needs `tvm` importable with `TVM_USE_RUNTIME_LIB=1` (set by `chipbench.runtime_guard.enforce`),
which loads `libtvm_runtime.so` and never `libtvm_compiler.so`; the full TVM install and the
runtime kit (`chipbench runtime-kit`) both do. In that mode TVM skips its device backends'
Python hooks (`tvm/backend/_autoload_backends.py`), so for a CUDA library this module loads
`libtvm_runtime_cuda.so` itself, from beside `libtvm_runtime.so` (and a `libcudart.so.*`
found there first, when the kit carries one).

Same load as `backends/tvm.py::load`: the Relax VM on the device, weights uploaded once and,
when the build lifted weight layout changes into `main_transform_params`, prepacked once.
"""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from chipbench.bundle_format import Arrays, Loaded, bundle_members, read_manifest


def versions() -> dict[str, str]:
    """tvm and tvm-ffi versions of the runtime in this process, and which TVM libraries it loaded."""
    import tvm
    import tvm_ffi

    from chipbench.runtime_guard import native_libraries

    return {"tvm": tvm.__version__, "tvm-ffi": getattr(tvm_ffi, "__version__", ""),
            "tvm_libraries": ",".join(Path(p).name for p in native_libraries("libtvm"))}


def load_cuda_module() -> None:
    """Register TVM's CUDA device API (`libtvm_runtime_cuda.so`, from beside `libtvm_runtime.so`)
    in this process, where TVM's import did not: a runtime-only process (TVM skips its device
    backends' hooks), or a full TVM imported before a CUDA driver (or the stub,
    `chipbench.cuda_stub`) could load. A `libcudart.so.*` found there first (a runtime kit may
    carry one) is loaded before it. RuntimeError when the module is missing or registers nothing."""
    import tvm
    from tvm.base import _LOADED_LIBS

    if tvm.get_global_func("ffi.Module.create.cuda", allow_missing=True) is not None:
        return
    lib_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    for cudart in sorted(lib_dir.glob("libcudart.so*")):
        ctypes.CDLL(str(cudart), mode=ctypes.RTLD_GLOBAL)
        break
    path = lib_dir / "libtvm_runtime_cuda.so"
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: this TVM runtime cannot run CUDA libraries")
    try:
        _LOADED_LIBS["tvm_runtime_cuda"] = ctypes.CDLL(str(path), mode=ctypes.RTLD_LOCAL)
    except OSError as exc:
        raise RuntimeError(f"TVM's CUDA runtime module does not load: {str(exc).splitlines()[0][:300]}") from None
    if tvm.get_global_func("ffi.Module.create.cuda", allow_missing=True) is None:
        raise RuntimeError("TVM's CUDA runtime module loaded but registered no CUDA module")


def _device(kind: str, index: int) -> Any:
    import tvm

    if kind == "cpu":
        return tvm.cpu(0)
    if kind == "cuda":
        load_cuda_module()
        dev = tvm.cuda(index)
        if not dev.exist:
            raise RuntimeError(f"no CUDA device {index} on this machine")
        return dev
    raise RuntimeError(f"unknown device kind '{kind}' in the bundle (known: cpu, cuda)")


def _describe(dev: Any, kind: str) -> dict[str, Any]:
    if kind != "cuda":
        return {}
    from chipbench.gpu import describe  # NVML where it is installed, TVM's attributes always

    return describe(dev.index, use_torch=False, tvm_device=dev)


def _param(spec: dict[str, Any], array: np.ndarray, dev: Any) -> Any:
    import tvm

    tensor = tvm.runtime.empty(tuple(spec["shape"]), spec["dtype"], dev)
    tensor.copyfrom(array)
    return tensor


def load(folder: Path, entries: dict[str, Any], input_names: list[str], output_names: list[str],
         device_index: int = 0) -> Loaded:
    """Load the bundle in `folder` whose manifest runtime entries are `entries` (see
    tvm_export.export_relax) on device `device_index` of the kind it was built for.
    RuntimeError when this machine has no such device or TVM runtime."""
    kind = entries.get("device", "cpu")
    if kind == "cpu":
        from chipbench.machine import usable_cores

        # as backends/tvm.py: every usable core, unless the user set TVM_NUM_THREADS
        os.environ.setdefault("TVM_NUM_THREADS", str(usable_cores()))
    import tvm
    from tvm.runtime.vm import VirtualMachine

    folder = Path(folder)
    start = time.perf_counter()
    dev = _device(kind, device_index)
    lib = tvm.runtime.load_module(str(folder / entries["library"]))
    vm = VirtualMachine(lib, dev)
    data = bundle_members(folder, entries["params"], read_manifest(folder))  # left-out weights: rebuilt, checked
    params = [_param(spec, data[f"p{i}"], dev) for i, spec in enumerate(entries["param_specs"])]
    del data
    if vm.module.implements_function("main_transform_params"):
        params = list(vm["main_transform_params"](params))
    main = vm["main"]
    upload = InputBuffers(input_names, dev)

    def run(inputs: Arrays) -> Arrays:
        outs = main(*upload(inputs), *params)
        return dict(zip(output_names, to_numpy(outs)))

    def timer(inputs: Arrays, n: int) -> list[float]:
        vm.set_input("main", *upload(inputs), *params)
        result = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=n)("main")
        return [float(t) for t in result.results]

    load_s = time.perf_counter() - start
    return Loaded(run=run, timer=timer if kind != "cpu" else None, load_s=load_s,
                  device=_describe(dev, kind), versions=versions(), timer_untimed_calls=1)


class InputBuffers:
    """Device tensors for a model's inputs, allocated once and refilled per query, as a
    deployment keeps them (`backends.tvm`, `tvm_cuda`, `tvm_rpc` and bundles alike).
    Calling it copies `inputs` (name -> array, any rank, 0-d included) in and returns the
    tensors in `names` order; a tensor is reallocated only when a shape or dtype changes."""

    def __init__(self, names: tuple[str, ...] | list[str], device: Any) -> None:
        self.names, self.device = tuple(names), device
        self.tensors: dict[str, Any] = {}

    def __call__(self, inputs: Arrays) -> list[Any]:
        import tvm

        for n in self.names:
            x = np.asarray(inputs[n], order="C")  # (ascontiguousarray would make a 0-d array 1-d)
            buf = self.tensors.get(n)
            if buf is None or tuple(buf.shape) != x.shape or buf.dtype != str(x.dtype):
                buf = self.tensors[n] = tvm.runtime.empty(x.shape, str(x.dtype), self.device)
            buf.copyfrom(x)
        return [self.tensors[n] for n in self.names]


def to_numpy(outs: Any) -> list[np.ndarray]:
    """A Relax VM's result (a tensor, or a tuple of them, nested) as host arrays in order."""
    if hasattr(outs, "numpy"):
        return [outs.numpy()]
    if type(outs).__name__ in ("Shape", "ShapeTuple"):  # a shape value (ONNX Shape's output): int64, as ONNX says
        return [np.array(list(outs), dtype=np.int64)]
    flat: list[np.ndarray] = []
    for o in outs:  # tuples of outputs come back as a runtime Array
        flat.extend(to_numpy(o))
    return flat
