"""The runtime side stays the runtime side: no torch, no ONNX, no TVM compiler in the process.

A bundle runner or an RPC server measures a compiled artifact; it needs numpy, the backend's
runtime (onnxruntime, or TVM's `libtvm_runtime.so` without the 259 MB `libtvm_compiler.so`)
and chipbench's measurement modules. Two things would drag more in: `tvm_ffi` imports torch
whenever torch is importable (`tvm_ffi/__init__.py`, to dodge a symbol clash on Windows), and
`import tvm` loads the compiler unless `TVM_USE_RUNTIME_LIB=1` (`tvm/base.py`). `enforce()`
turns both off before anything is imported; `native_libraries()` reads back what was loaded.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
from pathlib import Path

# Top-level packages a runtime-side process must never import (the compiling host's tools).
FORBIDDEN = ("torch", "torchvision", "onnx", "onnxscript", "torch_c_dlpack_ext")


class _Refuse(importlib.abc.MetaPathFinder):
    """A meta-path finder that answers 'no such module' for the forbidden packages, so that
    optional imports (`try: import torch except ImportError`) take their fallback."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = frozenset(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named '{fullname}' (refused on the runtime side)", name=fullname)
        return None


def enforce(names: tuple[str, ...] = FORBIDDEN, runtime_only: bool = True) -> None:
    """Refuse imports of `names` from now on and, with `runtime_only`, make `import tvm` load
    the runtime library only. Idempotent. Call it before anything imports tvm or tvm_ffi; a
    forbidden package that is already imported raises RuntimeError."""
    loaded = sorted(n for n in names if n in sys.modules)
    if loaded:
        raise RuntimeError(f"runtime-side process already imported {', '.join(loaded)}")
    if not any(isinstance(f, _Refuse) for f in sys.meta_path):
        sys.meta_path.insert(0, _Refuse(names))
    if runtime_only:
        os.environ["TVM_USE_RUNTIME_LIB"] = "1"


def native_libraries(pattern: str = "libtvm") -> list[str]:
    """Paths of the shared libraries mapped into this process whose name contains `pattern`
    (from /proc/self/maps; empty where the OS has none)."""
    try:
        text = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    found = {line.split()[-1] for line in text.splitlines() if pattern in line and "/" in line}
    return sorted(found)
