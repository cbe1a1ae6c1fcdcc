"""A stand-in CUDA driver library, so that TVM cross-compiles real GPU machine code on a host
without an NVIDIA driver.

Why it is needed (measured with apache-tvm 0.27 and nvcc 13):

- TVM's CUDA code generator hands each kernel source to `tvm_callback_cuda_compile` (nvcc or
  NVRTC) only when its CUDA runtime module, `libtvm_runtime_cuda.so`, is loaded: that library
  registers `ffi.Module.create.cuda`, which holds the compiled fatbin/cubin. Without it, TVM
  embeds the CUDA *source* in the library, and the device must compile it with NVRTC when it
  loads the library (slower cold starts, a different compiler from the one recorded, and no
  check here that the kernels compile at all).
- `libtvm_runtime_cuda.so` links against the driver, `libcuda.so.1` (DT_NEEDED), and `import
  tvm` loads it with `RTLD_NOW`. On a host with only the CUDA toolkit the load fails, silently.
- Of the driver it needs nine symbols at load time (`cuModuleLoadData`, `cuLaunchKernelEx`, ...,
  from `nm -D --undefined-only libtvm_runtime_cuda.so`); compiling calls none of them.

So `ensure_cuda_runtime()` compiles the few lines of C below with the system C compiler into a
shared object whose soname is `libcuda.so.1` (every function returns CUDA_ERROR_NO_DEVICE),
loads it with `RTLD_GLOBAL` so that the dynamic loader satisfies the DT_NEEDED entry by soname,
and then loads TVM's CUDA runtime module. The stub is built at run time into chipbench's cache
(keyed by the source's hash), never shipped as a binary, and used only when no real driver
loads. A subprocess can get the same effect from `subprocess_env()` (LD_LIBRARY_PATH).

Compiling also needs the target's `arch` in scope (`with target:`) and nvcc as the compiler
(`TVM_CUDA_COMPILE_MODE=nvcc`; TVM's default, NVRTC, needs the `cuda-bindings` package and,
for arch, a device): `backends.tvm_cuda.compile_for` sets both.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from chipbench.paths import cache_dir

DRIVER_SONAME = "libcuda.so.1"

# CUresult 100 is CUDA_ERROR_NO_DEVICE (cuda.h, enum cudaError_enum).
STUB_SOURCE = r"""
/* chipbench: stand-in for the CUDA driver, so that TVM's CUDA runtime module loads on a
   host without a GPU and TVM compiles kernels to machine code. Every call fails with
   CUDA_ERROR_NO_DEVICE; nothing here can run a kernel. */
typedef int CUresult;
#define NO_DEVICE 100
int chipbench_cuda_stub = 1; /* marks this library as the stub, not a driver */
CUresult cuInit(unsigned int flags) { (void)flags; return NO_DEVICE; }
CUresult cuDriverGetVersion(int *version) { if (version) *version = 0; return NO_DEVICE; }
CUresult cuDeviceGetCount(int *count) { if (count) *count = 0; return NO_DEVICE; }
CUresult cuDeviceGetName(char *name, int len, int dev) { (void)name; (void)len; (void)dev; return NO_DEVICE; }
CUresult cuFuncSetAttribute(void *fn, int attr, int value) { (void)fn; (void)attr; (void)value; return NO_DEVICE; }
CUresult cuGetErrorName(CUresult err, const char **text) { (void)err; if (text) *text = "CUDA_ERROR_NO_DEVICE"; return 0; }
CUresult cuGetErrorString(CUresult err, const char **text) {
  (void)err; if (text) *text = "no CUDA driver (chipbench cross-compilation stub)"; return 0;
}
CUresult cuLaunchKernelEx(const void *config, void *fn, void **params, void **extra) {
  (void)config; (void)fn; (void)params; (void)extra; return NO_DEVICE;
}
CUresult cuModuleGetFunction(void **fn, void *mod, const char *name) { (void)fn; (void)mod; (void)name; return NO_DEVICE; }
CUresult cuModuleLoadData(void **mod, const void *image) { (void)mod; (void)image; return NO_DEVICE; }
CUresult cuModuleUnload(void *mod) { (void)mod; return NO_DEVICE; }
CUresult cuTensorMapEncodeTiled(void *map, int dtype, unsigned rank, void *addr, const void *dims,
                                const void *strides, const void *box, const void *elem_strides,
                                int interleave, int swizzle, int l2, int fill) {
  (void)map; (void)dtype; (void)rank; (void)addr; (void)dims; (void)strides; (void)box;
  (void)elem_strides; (void)interleave; (void)swizzle; (void)l2; (void)fill; return NO_DEVICE;
}
"""


class StubError(RuntimeError):
    """The stub could not be built (no C compiler, or it failed); the message says which."""


_state: dict[str, str] = {}  # "driver": "real" | "stub", once decided for this process


def c_compiler() -> str | None:
    """The C compiler used to build the stub: $CC, else `cc`, else `gcc`; None if none is found."""
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def stub_library() -> Path:
    """Build (once; cached by the source's sha256) and return the stub's path, named
    `libcuda.so.1` in its own cache folder. Raises StubError without a working C compiler."""
    digest = hashlib.sha256(STUB_SOURCE.encode()).hexdigest()[:16]
    folder = cache_dir("cuda-stub", digest)
    path = folder / DRIVER_SONAME
    if path.is_file():
        return path
    cc = c_compiler()
    if cc is None:
        raise StubError("no C compiler (cc, gcc or $CC) to build the CUDA driver stub")
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        src, out = Path(tmp) / "cuda_stub.c", Path(tmp) / DRIVER_SONAME
        src.write_text(STUB_SOURCE)
        proc = subprocess.run([cc, "-shared", "-fPIC", "-O2", f"-Wl,-soname,{DRIVER_SONAME}", "-o", str(out), str(src)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise StubError(f"building the CUDA driver stub failed: {(proc.stderr or proc.stdout).strip()[:300]}")
        os.replace(out, path)  # atomic: a concurrent builder sees the whole file or none
    return path


def real_driver_loads() -> bool:
    """True when a CUDA driver library (`libcuda.so.1`) other than this stub loads in this
    process (a GPU host, or the toolkit's own stub on the library path). Loading it is what
    TVM would do anyway."""
    try:
        lib = ctypes.CDLL(DRIVER_SONAME, mode=os.RTLD_GLOBAL)
    except OSError:
        return False
    return not hasattr(lib, "chipbench_cuda_stub")


def ensure_cuda_runtime() -> str:
    """Make TVM's CUDA runtime module loadable in this process and load it.

    Returns "driver" when a real `libcuda.so.1` loaded, "stub" when the stub stands in for it.
    Must run before TVM compiles for CUDA; it works before or after `import tvm` (after, it
    loads `libtvm_runtime_cuda.so` itself, as `tvm.backend.cuda.register_backend` would have).
    Raises StubError when the stub is needed but cannot be built, and RuntimeError when TVM's
    CUDA runtime module still does not load (TVM built without CUDA, or libcudart missing).
    """
    if "driver" not in _state:
        if real_driver_loads():
            _state["driver"] = "driver"
        else:
            ctypes.CDLL(str(stub_library()), mode=os.RTLD_GLOBAL)
            _state["driver"] = "stub"
    from chipbench.backends.tvm_runtime import load_cuda_module

    load_cuda_module()
    return _state["driver"]


def subprocess_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of `env` (default: this process's) whose LD_LIBRARY_PATH finds the stub, for a
    child process that imports TVM on a host without a driver. Raises StubError as
    `stub_library` does."""
    env = dict(os.environ if env is None else env)
    folder = str(stub_library().parent)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (folder, env.get("LD_LIBRARY_PATH", "")) if p)
    return env
