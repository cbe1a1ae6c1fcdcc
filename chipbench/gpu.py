"""NVIDIA GPUs on this machine: is there one (cheaply), can torch use it, and what is it.

`cuda_present()` and `torch_cuda_problem()` import nothing heavy, so backends can call them from
`available()`. `describe(index)` reports what a CUDA device is (name, memory, driver, compute
capability, clocks) through NVML (`pynvml`, from the `nvidia-ml-py` package) where it is
importable, else through torch's `get_device_properties`; every backend that runs on a CUDA
device (`torch-*-cuda`, `tvm-cuda`) describes it with this one function.

CUDA ordinals and NVML indices differ when `CUDA_VISIBLE_DEVICES` reorders or hides devices:
`nvml_handle` maps the ordinal through that variable (an index or a `GPU-...` UUID), and
`describe` says which mapping it used.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

NO_DEVICE = "no CUDA device"

# Where the NVIDIA kernel driver shows its devices (Linux): one folder per GPU, one node per GPU.
_PROC_GPUS = Path("/proc/driver/nvidia/gpus")
_DEV = Path("/dev")


def cuda_present(proc_gpus: Path = _PROC_GPUS, dev: Path = _DEV) -> bool:
    """True when the NVIDIA driver shows at least one GPU on this machine: a folder under
    /proc/driver/nvidia/gpus, a /dev/nvidiaN node, or (where neither is visible, as in some
    sandboxes) a positive NVML device count. Imports no torch; costs a few stat calls."""
    try:
        if proc_gpus.is_dir() and any(proc_gpus.iterdir()):
            return True
    except OSError:
        pass
    try:
        if any(re.fullmatch(r"nvidia\d+", p.name) for p in dev.glob("nvidia*")):
            return True
    except OSError:
        pass
    return nvml_device_count() > 0


def nvml_device_count() -> int:
    """GPUs NVML sees (0 where pynvml is not importable or the NVML library is absent)."""
    try:
        with nvml_session() as nvml:
            return int(nvml.nvmlDeviceGetCount())
    except Exception:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded...
        return 0


def torch_build() -> tuple[str | None, str | None]:
    """(torch version, CUDA version torch was built with) read from torch/version.py without
    importing torch; (None, None) when torch is not installed, CUDA None for a CPU-only build."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None, None
    try:
        text = (Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text()
    except OSError:
        return None, None
    version = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.M)
    cuda = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
    return (version.group(1) if version else "unknown"), (cuda.group(1) if cuda else None)


def torch_cuda_problem() -> str | None:
    """Why torch cannot run on a CUDA device here (None when it can, as far as a cheap look
    tells): no NVIDIA device first, then torch missing or built without CUDA."""
    if not cuda_present():
        return NO_DEVICE
    version, cuda = torch_build()
    if version is None:
        return "torch is not installed"
    if cuda is None:
        return f"torch {version} is built without CUDA (a CPU-only wheel)"
    return None


@contextmanager
def nvml_session() -> Iterator[Any]:
    """`pynvml` initialised for the duration (NVML counts its inits, so nesting is safe).
    Raises ImportError without nvidia-ml-py and pynvml.NVMLError where NVML cannot start."""
    import pynvml

    pynvml.nvmlInit()
    try:
        yield pynvml
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def nvml_handle(nvml: Any, index: int) -> tuple[Any, str]:
    """NVML's handle for CUDA ordinal `index` and how it was matched ("uuid" or "index").

    With CUDA_VISIBLE_DEVICES set, ordinal N is its Nth entry (a physical index or a UUID);
    without it, CUDA's default order (fastest first) is assumed to be NVML's (PCI) order, which
    holds on machines of identical GPUs. Raises IndexError for an ordinal CUDA would not have."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [e.strip() for e in visible.split(",") if e.strip()]
        if index >= len(entries):
            raise IndexError(f"cuda:{index} is not visible (CUDA_VISIBLE_DEVICES={visible!r})")
        entry = entries[index]
        if entry.isdigit():
            return nvml.nvmlDeviceGetHandleByIndex(int(entry)), "CUDA_VISIBLE_DEVICES index"
        return nvml.nvmlDeviceGetHandleByUUID(entry), "uuid"
    return nvml.nvmlDeviceGetHandleByIndex(index), "index"


def describe_nvml(nvml: Any, index: int) -> dict[str, Any]:
    """What NVML reports for CUDA ordinal `index`: name, memory (bytes and GiB), driver,
    compute capability, SM and memory clocks (MHz: current and maximum), power limit (W), UUID.
    Fields a device does not support are left out."""
    handle, matched = nvml_handle(nvml, index)
    info: dict[str, Any] = {"name": _text(nvml.nvmlDeviceGetName(handle)), "source": "nvml",
                            "nvml_match": matched}

    def field(key: str, read) -> None:
        try:
            info[key] = read()
        except Exception:  # NVMLError_NotSupported and friends: leave the field out
            pass

    field("uuid", lambda: _text(nvml.nvmlDeviceGetUUID(handle)))
    field("memory_bytes", lambda: int(nvml.nvmlDeviceGetMemoryInfo(handle).total))
    if "memory_bytes" in info:
        info["memory_gib"] = round(info["memory_bytes"] / 2**30, 1)
    field("driver", lambda: _text(nvml.nvmlSystemGetDriverVersion()))
    field("compute_capability", lambda: "{}.{}".format(*nvml.nvmlDeviceGetCudaComputeCapability(handle)))
    field("sm_clock_mhz", lambda: int(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)))
    field("sm_clock_max_mhz", lambda: int(nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM)))
    field("memory_clock_mhz", lambda: int(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM)))
    field("memory_clock_max_mhz", lambda: int(nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_MEM)))
    field("power_limit_w", lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0)
    return info


def describe_torch(index: int) -> dict[str, Any]:
    """What torch reports for `cuda:index`: name, memory, compute capability, multiprocessors
    (and the UUID and clock where this torch exposes them). Imports torch; raises RuntimeError
    when torch cannot reach the device."""
    import torch

    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        raise RuntimeError(f"torch sees no cuda:{index} ({torch.cuda.device_count()} CUDA device(s))")
    p = torch.cuda.get_device_properties(index)
    info: dict[str, Any] = {"name": p.name, "source": "torch", "memory_bytes": int(p.total_memory),
                            "memory_gib": round(p.total_memory / 2**30, 1),
                            "compute_capability": f"{p.major}.{p.minor}",
                            "multiprocessors": int(p.multi_processor_count),
                            "cuda_runtime": torch.version.cuda}
    uuid = getattr(p, "uuid", None)
    if uuid is not None:
        info["uuid"] = "GPU-" + str(uuid) if not str(uuid).startswith("GPU-") else str(uuid)
    for attr, key in (("clock_rate", "sm_clock_max_mhz"), ("L2_cache_size", "l2_bytes")):
        value = getattr(p, attr, None)
        if value:
            info[key] = int(value) // 1000 if attr == "clock_rate" else int(value)  # clock_rate is kHz
    return info


def describe_tvm(device: Any) -> dict[str, Any]:
    """What TVM's runtime reports about `device` (a `tvm.cuda(i)`): name, memory, compute
    capability, multiprocessors, the maximum SM clock (TVM reports kHz) and the L2 size.
    Attributes this device or runtime does not answer are left out."""
    fields = {"name": "device_name", "memory_bytes": "total_global_memory", "compute_capability": "compute_version",
              "multiprocessors": "multi_processor_count", "sm_clock_max_mhz": "max_clock_rate",
              "l2_bytes": "l2_cache_size_bytes"}
    info: dict[str, Any] = {"source": "tvm"}
    for key, attr in fields.items():
        try:
            value = getattr(device, attr)
        except Exception:  # noqa: BLE001 - an attribute TVM cannot query here
            continue
        if value is not None:
            info[key] = value // 1000 if key == "sm_clock_max_mhz" else value
    if "memory_bytes" in info:
        info["memory_gib"] = round(info["memory_bytes"] / 2**30, 1)
    return info


def describe(index: int = 0, use_torch: bool | None = None, tvm_device: Any = None) -> dict[str, Any]:
    """The CUDA device `cuda:index` as a record names it: NVML's description where pynvml is
    importable and NVML starts, completed with torch's (multiprocessors, CUDA runtime) when
    torch is already imported or `use_torch` says to import it, and with TVM's (`tvm_device`,
    a `tvm.cuda(index)`) when given. Raises RuntimeError when none can describe the device."""
    import sys

    info: dict[str, Any] = {}
    problems = []
    if tvm_device is not None:
        info = describe_tvm(tvm_device)
    try:
        with nvml_session() as nvml:
            from_nvml = describe_nvml(nvml, index)
            info = {**info, **from_nvml, "source": "nvml+tvm" if info else "nvml"}
    except ImportError:
        problems.append("pynvml (nvidia-ml-py) is not installed")
    except Exception as exc:
        problems.append(f"NVML: {type(exc).__name__}: {exc}")
    if use_torch or (use_torch is None and "torch" in sys.modules):
        try:
            from_torch = describe_torch(index)
        except Exception as exc:
            problems.append(f"torch: {exc}")
        else:
            # NVML's fields win; torch adds what NVML lacks (multiprocessors, CUDA runtime)
            info = {**from_torch, **info, "source": "nvml+torch" if info else "torch"}
    if not info:
        raise RuntimeError(f"cannot describe cuda:{index}: " + "; ".join(problems))
    if problems:
        info["notes"] = problems
    return info


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
