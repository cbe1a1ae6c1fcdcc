"""What a local NVIDIA GPU reports about itself: name, memory, driver, compute capability, clocks.

NVML (`libnvidia-ml.so.1`, installed with the driver) is read through ctypes, so no Python
package is needed; TVM's device attributes fill in what NVML cannot give. Every field is
optional: a missing library or a failing call leaves its fields out rather than guessing.
Function signatures and constants: NVIDIA's NVML API reference (nvml.h), e.g. NVML_CLOCK_SM = 1,
NVML_CLOCK_MEM = 2, nvmlMemory_t = {total, free, used} in bytes.
"""

from __future__ import annotations

import ctypes
from typing import Any

NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
_NVML_BUFFER = 96  # NVML_DEVICE_NAME_V2_BUFFER_SIZE; the driver version needs 80


class _Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


def pci_bus_id(index: int) -> str | None:
    """The PCI bus id of CUDA device `index` as the CUDA runtime numbers devices (it honours
    CUDA_VISIBLE_DEVICES), e.g. "0000:17:00.0"; None without libcudart or the device."""
    for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so"):
        try:
            cudart = ctypes.CDLL(name)
        except OSError:
            continue
        buf = ctypes.create_string_buffer(32)
        if cudart.cudaDeviceGetPCIBusId(buf, len(buf), ctypes.c_int(index)) == 0:
            return buf.value.decode()
        return None
    return None


def nvml_info(index: int) -> dict[str, Any]:
    """NVML's view of CUDA device `index`: name, memory_bytes, driver, cuda_driver,
    compute_capability, clocks_mhz (sm/mem now and at most). Matched by PCI bus id when the
    CUDA runtime gives one (CUDA and NVML may number devices differently), else by index.
    Returns {} when NVML is missing or fails."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return {}
    if nvml.nvmlInit_v2() != 0:
        return {}
    try:
        handle = ctypes.c_void_p()
        bus = pci_bus_id(index)
        found = (nvml.nvmlDeviceGetHandleByPciBusId_v2(bus.encode(), ctypes.byref(handle)) == 0 if bus
                 else nvml.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(index), ctypes.byref(handle)) == 0)
        if not found:
            return {}
        info: dict[str, Any] = {"matched_by": "pci_bus_id" if bus else "index"}
        if bus:
            info["pci_bus_id"] = bus
        buf = ctypes.create_string_buffer(_NVML_BUFFER)
        if nvml.nvmlDeviceGetName(handle, buf, ctypes.c_uint(len(buf))) == 0:
            info["name"] = buf.value.decode()
        if nvml.nvmlSystemGetDriverVersion(buf, ctypes.c_uint(len(buf))) == 0:
            info["driver"] = buf.value.decode()
        version = ctypes.c_int()
        if nvml.nvmlSystemGetCudaDriverVersion_v2(ctypes.byref(version)) == 0:
            info["cuda_driver"] = f"{version.value // 1000}.{version.value % 1000 // 10}"
        memory = _Memory()
        if nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)) == 0:
            info["memory_bytes"] = int(memory.total)
        major, minor = ctypes.c_int(), ctypes.c_int()
        if nvml.nvmlDeviceGetCudaComputeCapability(handle, ctypes.byref(major), ctypes.byref(minor)) == 0:
            info["compute_capability"] = f"{major.value}.{minor.value}"
        clocks = {}
        for label, kind in (("sm", NVML_CLOCK_SM), ("mem", NVML_CLOCK_MEM)):
            mhz = ctypes.c_uint()
            if nvml.nvmlDeviceGetClockInfo(handle, kind, ctypes.byref(mhz)) == 0:
                clocks[label] = mhz.value
            if nvml.nvmlDeviceGetMaxClockInfo(handle, kind, ctypes.byref(mhz)) == 0:
                clocks[f"{label}_max"] = mhz.value
        if clocks:
            info["clocks_mhz"] = clocks
        return info
    finally:
        nvml.nvmlShutdown()


def tvm_device_info(device: Any) -> dict[str, Any]:
    """What TVM's runtime reports about a device (`tvm.cuda(i)`): name, memory_bytes,
    compute_capability, sm_count, max_clock_mhz (TVM reports kHz), l2_cache_bytes. Fields whose
    query fails are left out."""
    fields = {"name": "device_name", "memory_bytes": "total_global_memory", "compute_capability": "compute_version",
              "sm_count": "multi_processor_count", "max_clock_mhz": "max_clock_rate",
              "l2_cache_bytes": "l2_cache_size_bytes", "driver_api": "driver_version"}
    info: dict[str, Any] = {}
    for key, attr in fields.items():
        try:
            value = getattr(device, attr)
        except Exception:  # an attribute this device or runtime does not answer
            continue
        if value is not None:
            info[key] = value // 1000 if key == "max_clock_mhz" else value
    return info


def cuda_device_info(index: int, device: Any = None) -> dict[str, Any]:
    """Everything known about CUDA device `index`: NVML's fields first, TVM's for the rest
    (`device` is its `tvm.cuda(index)`), with `source` naming which answered."""
    nvml = nvml_info(index)
    runtime = tvm_device_info(device) if device is not None else {}
    info = {**runtime, **nvml}
    info["source"] = "+".join(name for name, part in (("nvml", nvml), ("tvm", runtime)) if part) or "none"
    return info
