"""Write a compiled Relax executable as a bundle's backend files (the compiling host's half).

One format for every TVM device, so that one runtime module (`tvm_runtime.py`) loads them all:

    model.so     `exe.export_library()`: host code plus, for a GPU target, the device code
                 embedded as an imported module (PTX/cubin for CUDA)
    params.npz   `main`'s weight parameters in order (p0, p1, ...), as compiled (before any
                 layout change: a build with weight prepacking keeps its
                 `main_transform_params`, which the runtime runs once at load)

Manifest entries: `module` (the runtime module), `device` (the device kind the library was
built for: "cpu" or "cuda"), the file names, and per parameter its dtype and shape. bfloat16
weights travel as their uint16 bit patterns (numpy has no bfloat16) and are reinterpreted on
load. Imports TVM's compiler: host side only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

RUNTIME_MODULE = "chipbench.backends.tvm_runtime"
LIBRARY = "model.so"
PARAMS = "params.npz"


def export_relax(exe: Any, weights: list[Any], folder: Path, device_kind: str) -> dict[str, Any]:
    """Write `exe` (a `tvm.relax` executable from `tvm.compile`) and `weights` (the tensors
    `main` takes after its inputs, host or device `tvm.runtime.Tensor`s or numpy arrays) into
    `folder`; returns the manifest's runtime entries. `device_kind` is the kind the target was
    built for ("cpu" for LLVM, "cuda" for a CUDA target)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    exe.export_library(str(folder / LIBRARY))
    arrays, params = {}, []
    for i, w in enumerate(weights):
        a = w if isinstance(w, np.ndarray) else w.numpy()
        dtype = str(getattr(w, "dtype", a.dtype))
        if dtype == "bfloat16":  # numpy (without ml_dtypes) cannot hold it: ship the bit pattern
            a = a.view(np.uint16)
        arrays[f"p{i}"] = np.asarray(a, order="C")  # (ascontiguousarray would make a 0-d weight 1-d)
        params.append({"dtype": dtype, "shape": list(a.shape)})
    with open(folder / PARAMS, "wb") as f:
        np.savez(f, **arrays)
    return {
        "module": RUNTIME_MODULE,
        "device": device_kind,
        "library": LIBRARY,
        "params": PARAMS,
        "param_specs": params,
        "files": [LIBRARY, PARAMS],
    }
