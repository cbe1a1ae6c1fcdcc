"""A runtime-only TVM to carry to a device: TVM's runtime libraries, the Python files its
runtime imports, tvm-ffi for the device's Python, and the bundle runner.

What the installed `tvm` does with `TVM_USE_RUNTIME_LIB=1` (tvm/base.py, tvm/__init__.py,
tvm/backend/_autoload_backends.py, TVM 0.27): it loads `libtvm_runtime.so` (RTLD_GLOBAL) and
never `libtvm_compiler.so`; a missing compiler library has the same effect. `import tvm` still
imports the Python packages ir, script, tirx, target, te, driver, support, sym, runtime (and
rpc, exec for an RPC server) but skips `tvm.relax` and the device backends' Python hooks, so
`libtvm_runtime_cuda.so` is not loaded by TVM (chipbench.backends.tvm_runtime loads it for a
CUDA bundle). `tvm_ffi` is a compiled extension built per Python version: for another Python
than this one the kit takes tvm-ffi from its wheel (`pip download`, or a file given).

Layout (put `python/` on PYTHONPATH, or use the two scripts):

    run-bundle               TVM_USE_RUNTIME_LIB=1 python3 -m chipbench.bundle_runner "$@"
    rpc-serve                TVM_USE_RUNTIME_LIB=1 python3 -m chipbench.rpc_server "$@" (a board)
    python/tvm/              the runtime's Python files + lib/libtvm_runtime*.so, LICENSE, NOTICE
    python/tvm_ffi/          tvm-ffi without its C++ headers and sources
    python/typing_extensions.py, python/chipbench/ (the runner's modules only)
    kit.json                 versions, Python, sha256 and size of every file

The device still needs numpy (pass its wheel with `wheels`, e.g. from `pip download numpy
--only-binary=:all: --python-version 3.12 ...`), and for CUDA bundles a CUDA runtime
(`libcudart.so.13` for this TVM build; `cudart` copies one into the kit).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from chipbench.bundle_format import sha256_file

FFI_VERSION = "0.1.14.post1"  # pinned in pyproject.toml: 0.1.15.post2 segfaults in tvm.ir.save_json
# tvm subpackages that a runtime-only `import tvm`, tvm.runtime.vm and tvm.rpc import (measured
# with sys.modules); `backend` and `contrib` contribute only their top-level modules.
TVM_PACKAGES = ("driver", "exec", "ir", "rpc", "runtime", "script", "support", "sym", "target", "te", "tirx")
TVM_TOP_LEVEL_ONLY = ("backend", "contrib")
TVM_LIBRARIES = ("libtvm_runtime.so", "libtvm_runtime_cuda.so")
TVM_NOTICES = ("LICENSE", "NOTICE")
FFI_SKIP = {"include", "src", "3rdparty", "cython", "stub", "share", "__pycache__"}  # C++ and build inputs
# The runner's modules (chipbench.bundle_runner imports these and nothing else of chipbench).
CHIPBENCH_FILES = ("__init__.py", "accuracy.py", "bundle_format.py", "bundle_runner.py", "energy.py", "gpu.py",
                   "machine.py", "measures.py", "migrate.py", "paths.py", "quiet.py", "resources.py",
                   "record.py", "recording.py", "rpc_server.py", "runtime_guard.py", "samples.py", "scenarios.py",
                   "stats.py", "tails.py", "validity.py", "schema/run_record.schema.json")
BACKEND_FILES = ("__init__.py", "tvm_runtime.py", "ort_runtime.py")
CARRY_LIMIT = 64 * 2**20  # what may travel to the device, bytes

_SCRIPT = """#!/bin/sh
# chipbench runtime kit: {what}
here="$(cd "$(dirname "$0")" && pwd)"
export PYTHONPATH="$here/python${{PYTHONPATH:+:$PYTHONPATH}}"
export TVM_USE_RUNTIME_LIB=1
exec ${{PYTHON:-python3}} -m {module} "$@"  # PYTHON may carry flags, e.g. "python3.12 -S"
"""


class KitError(Exception):
    """The kit cannot be assembled (one line: what is missing and how to get it)."""


@dataclass(frozen=True)
class Kit:
    """An assembled kit: its folder, the Python it is for, its total size in bytes and kit.json."""

    folder: Path
    python: str
    total_bytes: int
    info: dict


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)


def _tvm_root() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        raise KitError("apache-tvm is not installed here: the kit copies its runtime from this install")
    return Path(list(spec.submodule_search_locations)[0])


def _copy_tvm(dest: Path) -> None:
    root = _tvm_root()
    for path in root.glob("*.py"):
        _copy(path, dest / path.name)
    for pkg in TVM_PACKAGES:
        for path in (root / pkg).rglob("*.py"):
            _copy(path, dest / path.relative_to(root))
    for pkg in TVM_TOP_LEVEL_ONLY:
        for path in (root / pkg).glob("*.py"):
            _copy(path, dest / path.relative_to(root))
    for name in TVM_LIBRARIES:
        if not (root / "lib" / name).is_file():
            raise KitError(f"{root / 'lib' / name} is missing from this TVM install")
        _copy(root / "lib" / name, dest / "lib" / name)
    for name in TVM_NOTICES:
        if (root / name).is_file():
            _copy(root / name, dest / name)


def _ffi_files(names: list[str]) -> list[str]:
    keep = []
    for name in names:
        parts = Path(name).parts
        if not parts or parts[0] != "tvm_ffi" or name.endswith("/"):
            continue
        if FFI_SKIP & set(parts[1:-1]) or (len(parts) > 1 and parts[1] in FFI_SKIP) or name.endswith(".pyi"):
            continue
        keep.append(name)
    return keep


def _copy_ffi_installed(dest: Path) -> None:
    import importlib.util

    spec = importlib.util.find_spec("tvm_ffi")
    root = Path(list(spec.submodule_search_locations)[0])
    names = [str(Path("tvm_ffi") / p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
    for name in _ffi_files(names):
        _copy(root.parent / name, dest / name)


def _unpack_wheel(wheel: Path, dest: Path, only_ffi: bool = False) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            if only_ffi:
                chosen = _ffi_files(names) + [n for n in names if ".dist-info/licenses/" in n]
            else:  # a package's own test suite is not needed to run it
                chosen = [n for n in names if "tests" not in Path(n).parts[1:-1]]
            for name in chosen:
                if name.endswith("/"):  # a directory entry
                    continue
                if Path(name).is_absolute() or ".." in Path(name).parts:
                    raise KitError(f"{wheel}: member {name!r} leaves the kit folder")
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                if name.endswith(".so") or ".so." in name:
                    target.chmod(0o755)
    except zipfile.BadZipFile:
        raise KitError(f"{wheel}: not a wheel (zip) file") from None


def pip_download(requirements: list[str], python: str, folder: Path, deps: bool = False) -> list[Path]:
    """`pip download` binary wheels of `requirements` (and with `deps` their dependencies) for
    CPython `python` (e.g. "3.12") on manylinux x86_64 into `folder`; returns the wheels now
    there. KitError (with the command, to run elsewhere) when pip cannot."""
    cmd = [sys.executable, "-m", "pip", "download", *([] if deps else ["--no-deps"]), "--only-binary=:all:",
           "--python-version", python, "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
           "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "-d", str(folder),
           *requirements]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise KitError(f"could not download {' '.join(requirements)} for Python {python} ({last}); fetch them "
                       f"elsewhere with `pip {' '.join(cmd[3:])}`")
    return sorted(Path(folder).glob("*.whl"))


def download_ffi_wheel(python: str, folder: Path) -> Path:
    """`pip download` apache-tvm-ffi FFI_VERSION for CPython `python` (e.g. "3.12") on
    manylinux x86_64 into `folder`; KitError (with the command) when pip cannot."""
    tag = python.replace(".", "")
    try:
        pip_download([f"apache-tvm-ffi=={FFI_VERSION}"], python, folder)
    except KitError as exc:
        raise KitError(f"{exc} and pass --ffi-wheel") from None
    wheels = sorted(folder.glob(f"apache_tvm_ffi-{FFI_VERSION}-cp{tag}-*.whl"))
    if not wheels:
        raise KitError(f"pip downloaded no apache-tvm-ffi {FFI_VERSION} wheel for Python {python}; pass --ffi-wheel")
    return wheels[0]


def _copy_chipbench(dest: Path) -> None:
    import chipbench
    import chipbench.backends

    root, backends = Path(chipbench.__file__).parent, Path(chipbench.backends.__file__).parent
    for name in CHIPBENCH_FILES:
        _copy(root / name, dest / "chipbench" / name)
    for name in BACKEND_FILES:
        _copy(backends / name, dest / "chipbench" / "backends" / name)


def _copy_typing_extensions(dest: Path) -> None:
    import typing_extensions

    _copy(Path(typing_extensions.__file__), dest / "typing_extensions.py")


def build_kit(out: Path, python: str | None = None, ffi_wheel: Path | None = None,
              wheels: tuple[Path, ...] = (), cudart: Path | None = None) -> Kit:
    """Assemble the kit in `out` (new or empty) for CPython `python` ("3.12"; default: this
    one). tvm-ffi comes from this install when the versions agree, else from `ffi_wheel` or a
    `pip download`. `wheels` (e.g. numpy for that Python) are unpacked into python/; `cudart`
    (a libcudart.so) is copied beside libtvm_runtime_cuda.so. KitError when a part is missing."""
    import tvm_ffi

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise KitError(f"--out {out}: exists and is not an empty folder")
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    python = python or here
    if ffi_wheel is None and python == here and getattr(tvm_ffi, "__version__", FFI_VERSION) != FFI_VERSION:
        raise KitError(f"installed tvm-ffi is {tvm_ffi.__version__}, the kit carries {FFI_VERSION}: pass --ffi-wheel")
    for wheel in (ffi_wheel, *wheels):
        if wheel is not None and not Path(wheel).is_file():
            raise KitError(f"{wheel}: no such wheel file")
    if cudart is not None and not Path(cudart).is_file():
        raise KitError(f"{cudart}: no such file")
    pydir = out / "python"
    pydir.mkdir(parents=True, exist_ok=True)
    _copy_tvm(pydir / "tvm")
    if ffi_wheel is not None:
        _unpack_wheel(Path(ffi_wheel), pydir, only_ffi=True)
    elif python == here:
        _copy_ffi_installed(pydir)
    else:
        with tempfile.TemporaryDirectory(prefix="chipbench-kit-") as tmp:
            _unpack_wheel(download_ffi_wheel(python, Path(tmp)), pydir, only_ffi=True)
    _copy_typing_extensions(pydir)
    _copy_chipbench(pydir)
    for wheel in wheels:
        _unpack_wheel(Path(wheel), pydir)
    if cudart is not None:
        _copy(Path(cudart), pydir / "tvm" / "lib" / Path(cudart).name)
    for script, module, what in (("run-bundle", "chipbench.bundle_runner", "measure a bundle, TVM runtime only"),
                                 ("rpc-serve", "chipbench.rpc_server", "a runtime-only TVM RPC server (a board)")):
        path = out / script
        path.write_text(_SCRIPT.format(module=module, what=what))
        path.chmod(0o755)
    files = {str(p.relative_to(out)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in sorted(out.rglob("*")) if p.is_file()}
    import tvm_ffi as _ffi

    info = {
        "format": "chipbench-runtime-kit", "python": python, "tvm": _tvm_version(),
        "tvm_ffi": FFI_VERSION if (ffi_wheel or python != here) else getattr(_ffi, "__version__", ""),
        "tvm_libraries": list(TVM_LIBRARIES), "wheels": [Path(w).name for w in wheels],
        "cudart": Path(cudart).name if cudart else None, "env": {"TVM_USE_RUNTIME_LIB": "1"},
        "files": files,
    }
    text = json.dumps(info, indent=1, sort_keys=True)
    (out / "kit.json").write_text(text)
    total = sum(f["bytes"] for f in files.values()) + len(text.encode())
    return Kit(out, python, total, info)


def _tvm_version() -> str:
    """The installed apache-tvm's version, read without importing tvm (no compiler load)."""
    from importlib import metadata

    try:
        return metadata.version("apache-tvm")
    except metadata.PackageNotFoundError:
        return ""


def kit_env(kit: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment that runs Python against the kit only: PYTHONPATH is the kit's python/
    folder, TVM_USE_RUNTIME_LIB=1 (pair it with `python -S` to leave site-packages out)."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = str(Path(kit) / "python")
    env["TVM_USE_RUNTIME_LIB"] = "1"
    return env
