"""GPU ceilings: what a CUDA GPU attains (dense matmul FLOP/s per precision, device-memory
bandwidth) beside what its datasheet says, saved as a device profile of its own.

The profile has the CPU profile's shape (`chipbench.probe.DeviceProfile`), with a `Machine`
of kind "cuda" (name, multiprocessors, `sm_XY`, max SM clock) and the key `cuda-<name>`, so
the roofline places a record that ran on that GPU against that GPU's ceilings
(`chipbench.probe.load_profile_for`), never against its host CPU's.

Measured with torch on the device: an n×n×n matmul per precision (random operands, never
zeros), each timing a run of back-to-back products between two CUDA events, best of several;
fp32 with TF32 off, tf32 with it on (then restored); fp8 through `torch._scaled_mm` (e4m3
operands, per-tensor scales, bf16 output, fast accumulation) where compute capability ≥ 8.9;
int8 through `torch._int_mm` (int32 accumulation). Bandwidth is a device-to-device copy of a
buffer far larger than L2, counting the bytes read plus the bytes written.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from chipbench.errors import one_line
from chipbench.probe import DeviceProfile, Machine, load_profile_for, save_profile

PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8")


@dataclass(frozen=True)
class Datasheet:
    """A GPU's vendor peaks: dense (not 2:4-sparse) Tensor Core rates in TFLOP/s (int8 in
    TOPS), plain fp32 (CUDA cores), memory bandwidth in GB/s, and the document they are from."""

    model: str
    tflops: dict[str, float]
    bandwidth_gbps: float
    source: str


# Vendor datasheets list Tensor Core rates "with sparsity" (marked *); dense is half of that.
_H100 = "NVIDIA H100 Tensor Core GPU datasheet (nvidia.com, 2023): dense = the starred sparse figure / 2"
_H200 = "NVIDIA H200 Tensor Core GPU datasheet (nvidia.com, 2024): dense = the starred sparse figure / 2"
_A100 = "NVIDIA A100 Tensor Core GPU datasheet (nvidia.com, 2021): dense figures as listed"
_L4 = "NVIDIA L4 Tensor Core GPU datasheet (nvidia.com, 2023): dense = the starred sparse figure / 2"


def _sheet(model: str, fp32: float, tf32: float, bf16: float, fp8: float | None, int8: float,
           bandwidth_gbps: float, source: str) -> Datasheet:
    tflops = {"fp32": fp32, "tf32": tf32, "bf16": bf16, "fp16": bf16, "int8": int8}
    if fp8 is not None:
        tflops["fp8"] = fp8
    return Datasheet(model, tflops, bandwidth_gbps, source)


# (name pattern as NVML / torch report it, datasheet); first match wins, so variants come first.
KNOWN_GPUS: tuple[tuple[str, Datasheet], ...] = (
    # H200 NVL: TF32 835*, BF16/FP16 1,671*, FP8 3,341*, INT8 3,341*, FP32 60; 141 GB HBM3e at 4.8 TB/s
    (r"\bH200\b.*\bNVL\b", _sheet("H200 NVL", 60.0, 417.5, 835.5, 1670.5, 1670.5, 4800.0, _H200)),
    # H200 SXM: TF32 989*, BF16/FP16 1,979*, FP8 3,958*, INT8 3,958*, FP32 67; 141 GB HBM3e at 4.8 TB/s
    (r"\bH200\b", _sheet("H200 SXM", 67.0, 494.5, 989.5, 1979.0, 1979.0, 4800.0, _H200)),
    # H100 NVL: TF32 835*, BF16/FP16 1,671*, FP8 3,341*, INT8 3,341*, FP32 60; 94 GB HBM3 at 3.9 TB/s
    (r"\bH100\b.*\bNVL\b", _sheet("H100 NVL", 60.0, 417.5, 835.5, 1670.5, 1670.5, 3900.0, _H100)),
    # H100 PCIe: TF32 756*, BF16/FP16 1,513*, FP8 3,026*, INT8 3,026*, FP32 51; 80 GB HBM2e at 2 TB/s
    (r"\bH100\b.*\bPCIe\b", _sheet("H100 PCIe", 51.0, 378.0, 756.5, 1513.0, 1513.0, 2000.0, _H100)),
    # H100 SXM5 ("NVIDIA H100 80GB HBM3"): TF32 989*, BF16/FP16 1,979*, FP8 3,958*, INT8 3,958*,
    # FP32 67; 80 GB HBM3 at 3.35 TB/s
    (r"\bH100\b", _sheet("H100 SXM", 67.0, 494.5, 989.5, 1979.0, 1979.0, 3350.0, _H100)),
    # A100: FP32 19.5, TF32 156, BF16/FP16 312, INT8 624 (no FP8); bandwidth per memory variant
    (r"\bA100\b.*SXM.*80GB", _sheet("A100 SXM 80GB", 19.5, 156.0, 312.0, None, 624.0, 2039.0, _A100)),
    (r"\bA100\b.*80GB", _sheet("A100 PCIe 80GB", 19.5, 156.0, 312.0, None, 624.0, 1935.0, _A100)),
    (r"\bA100\b", _sheet("A100 40GB", 19.5, 156.0, 312.0, None, 624.0, 1555.0, _A100)),
    # L4: FP32 30.3, TF32 120*, BF16/FP16 242*, FP8 485*, INT8 485*; 24 GB GDDR6 at 300 GB/s
    (r"\bL4\b", _sheet("L4", 30.3, 60.0, 121.0, 242.5, 242.5, 300.0, _L4)),
)


def datasheet(name: str) -> Datasheet | None:
    """The datasheet peaks of the GPU called `name` (e.g. "NVIDIA H200", "NVIDIA H100 PCIe"),
    None for a GPU not in KNOWN_GPUS (then the profile has no theoretical peaks, never guesses)."""
    for pattern, sheet in KNOWN_GPUS:
        if re.search(pattern, name, re.IGNORECASE):
            return sheet
    return None


def gpu_machine(info: dict[str, Any]) -> Machine:
    """The profile's Machine for a GPU described by `chipbench.gpu.describe`: kind "cuda",
    its name, multiprocessors as cores, `sm_XY` as arch, the maximum SM clock as mhz."""
    cc = str(info.get("compute_capability", "")).replace(".", "")
    return Machine(cpu=info["name"], cores=int(info.get("multiprocessors") or 0), arch=f"sm_{cc}" if cc else "",
                   flags=(), mhz=info.get("sm_clock_max_mhz"), vendor="NVIDIA", family=None, kind="cuda")


def build_gpu_profile(info: dict[str, Any], peaks_gflops: dict[str, float], bandwidth_gbps: float,
                      skipped: dict[str, str], details: dict[str, Any], quick: bool) -> DeviceProfile:
    """A GPU's DeviceProfile from its description, measured peaks (GFLOP/s, int8 GOP/s) and copy
    bandwidth (GB/s, read + write bytes), with the datasheet's dense peaks where the GPU is known."""
    sheet = datasheet(info["name"])
    theory = {p: v * 1000.0 for p, v in sheet.tflops.items()} if sheet else {}
    assumptions = (f"{sheet.model}: {sheet.source}; memory {sheet.bandwidth_gbps:g} GB/s" if sheet
                   else f"{info['name']} is not in chipbench.gpu_probe.KNOWN_GPUS: no theoretical peaks")
    details = {**details, "skipped": skipped, "device": info,
               "theoretical_bandwidth_gbps": sheet.bandwidth_gbps if sheet else None,
               "copy_bytes_counted": "bytes read + bytes written (2 x buffer)"}
    return DeviceProfile(machine=gpu_machine(info), peak_gflops=peaks_gflops, bandwidth_gbps=bandwidth_gbps,
                         theoretical_gflops=theory, assumptions=assumptions, details=details, quick=quick,
                         measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def event_seconds(torch, op: Callable[[], Any], inner: int, repeats: int, warmup: int = 3) -> float:
    """Best seconds per call of `op` on the current CUDA device: `warmup` untimed calls, then
    `repeats` timings of `inner` back-to-back calls between two CUDA events."""
    for _ in range(warmup):
        op()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            op()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3 / inner)
    return best


def matmul_op(torch, precision: str, n: int, device) -> tuple[Callable[[], Any], str]:
    """An n×n×n product in `precision` on `device` (random operands) and what computes it.
    Raises RuntimeError/ValueError where this GPU or torch cannot do it (the probe skips it)."""
    if precision in ("fp32", "tf32", "bf16", "fp16"):
        dt = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        a = torch.randn(n, n, device=device, dtype=dt)
        b = torch.randn(n, n, device=device, dtype=dt)
        c = torch.empty(n, n, device=device, dtype=dt)
        return (lambda: torch.mm(a, b, out=c)), "torch.mm (cuBLAS)"
    if precision == "fp8":
        if torch.cuda.get_device_capability(device) < (8, 9) or not hasattr(torch, "_scaled_mm"):
            raise ValueError("fp8 matmul needs compute capability >= 8.9 and torch._scaled_mm")
        a = torch.randn(n, n, device=device).to(torch.float8_e4m3fn)
        b = torch.randn(n, n, device=device).to(torch.float8_e4m3fn).t()  # column-major, as cuBLASLt wants
        one = torch.tensor(1.0, device=device)
        op = lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16,  # noqa: E731
                                      use_fast_accum=True)
        op()  # raises here if this build refuses the call
        return op, "torch._scaled_mm (e4m3, per-tensor scales, bf16 out, fast accumulation)"
    if precision == "int8":
        a = torch.randint(-64, 64, (n, n), device=device, dtype=torch.int8)
        b = torch.randint(-64, 64, (n, n), device=device, dtype=torch.int8)
        op = lambda: torch._int_mm(a, b)  # noqa: E731
        op()
        return op, "torch._int_mm (int32 accumulation)"
    raise ValueError(f"unknown precision '{precision}'")


def measure_matmul(torch, precision: str, n: int, device, inner: int, repeats: int) -> tuple[float, str]:
    """Best GFLOP/s (2·n³ per product) of an n×n×n matmul in `precision`, and its source.
    tf32 turns TF32 on for the measurement and off again after it (fp32 here and the CUDA
    backends run with TF32 off)."""
    from chipbench.backends.torch_backends import set_tf32

    if precision in ("fp32", "tf32"):
        set_tf32(torch, precision == "tf32")
    try:
        op, source = matmul_op(torch, precision, n, device)
        seconds = event_seconds(torch, op, inner, repeats)
    finally:
        if precision == "tf32":
            set_tf32(torch, False)
    return 2.0 * n**3 / seconds / 1e9, source


def measure_copy(torch, nbytes: int, device, inner: int, repeats: int) -> float:
    """Device-memory GB/s of a device-to-device copy of `nbytes`, counting read + write bytes."""
    src = torch.randint(0, 255, (nbytes,), device=device, dtype=torch.uint8)
    dst = torch.empty_like(src)
    seconds = event_seconds(torch, lambda: dst.copy_(src), inner, repeats)
    return 2 * nbytes / seconds / 1e9


def measure_gpu_ceilings(index: int = 0, quick: bool = False) -> DeviceProfile:
    """Measure `cuda:index`: dense matmul GFLOP/s per precision and copy bandwidth (seconds on
    an H100-class GPU). Raises RuntimeError when torch cannot reach the device."""
    import torch

    from chipbench.gpu import describe

    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        raise RuntimeError(f"torch {torch.__version__} cannot reach cuda:{index}")
    device = torch.device("cuda", index)
    torch.cuda.set_device(device)
    n, inner, repeats = (4096, 3, 3) if quick else (8192, 5, 5)
    peaks: dict[str, float] = {}
    sources: dict[str, str] = {}
    skipped: dict[str, str] = {}
    start = time.perf_counter()
    for precision in PRECISIONS:
        try:
            peaks[precision], sources[precision] = measure_matmul(torch, precision, n, device, inner, repeats)
        except Exception as exc:  # unsupported dtype or kernel on this GPU / build
            skipped[precision] = one_line(exc, 200)
        torch.cuda.empty_cache()
    free, _total = torch.cuda.mem_get_info(device)
    nbytes = min((256 if quick else 1024) << 20, free // 4)
    bandwidth = measure_copy(torch, nbytes, device, inner, repeats)
    torch.cuda.empty_cache()
    info = describe(index, use_torch=True)  # clocks read right after the load, not idle
    details = {"gemm_n": n, "inner": inner, "repeats": repeats, "source": sources, "copy_bytes": nbytes,
               "timing": "CUDA events, best of repeats, each the mean of inner back-to-back calls",
               "operands": "random (torch.randn / randint), never zeros", "seconds": round(time.perf_counter() - start, 2)}
    return build_gpu_profile(info, peaks, bandwidth, skipped, details, quick)


def probe_gpus(results_dir: Path, quick: bool = False, if_missing: bool = False,
               say: Callable[[str], None] = print, note: Callable[[str], None] = print) -> list[Path]:
    """`chipbench probe` on the GPUs: nothing (not even a torch import) without an NVIDIA
    device; otherwise one profile per distinct GPU model, printed with `say` (data) and `note`
    (progress). Returns the profiles written."""
    from chipbench.gpu import cuda_present, torch_cuda_problem

    if not cuda_present():
        return []
    problem = torch_cuda_problem()
    if problem:
        note(f"GPU: not measured ({problem})")
        return []
    import torch

    written, seen = [], set()
    for index in range(torch.cuda.device_count()):
        name = torch.cuda.get_device_name(index)
        if name in seen:
            continue
        seen.add(name)
        if if_missing and load_profile_for(results_dir, {"kind": "cuda", "name": name}) is not None:
            note(f"GPU profile of {name} already measured (drop --if-missing to measure again)")
            continue
        note(f"chipbench: measuring GPU ceilings of cuda:{index} ({name})...")
        profile = measure_gpu_ceilings(index, quick)
        written.append(save_profile(profile, results_dir))
        for line in summary_lines(profile):
            say(line)
        note(f"wrote {written[-1]}")
    return written


def summary_lines(profile: DeviceProfile) -> list[str]:
    """What `chipbench probe` prints for a GPU profile: one line per precision and bandwidth."""
    m = profile.machine
    lines = []
    for precision, gflops in profile.peak_gflops.items():
        theory = profile.theoretical_gflops.get(precision)
        of = f" ({100 * gflops / theory:.0f} % of datasheet {theory / 1000:.0f})" if theory else ""
        unit = "TOP/s" if precision == "int8" else "TFLOP/s"
        lines.append(f"{m.cpu} peak {precision}: {gflops / 1000:.1f} {unit}{of}")
    sheet_bw = profile.details.get("theoretical_bandwidth_gbps")
    of = f" ({100 * profile.bandwidth_gbps / sheet_bw:.0f} % of datasheet {sheet_bw:g})" if sheet_bw else ""
    lines.append(f"{m.cpu} copy bandwidth: {profile.bandwidth_gbps:.0f} GB/s (read + write){of}")
    for precision, why in profile.details.get("skipped", {}).items():
        lines.append(f"{m.cpu} {precision}: not measured ({why})")
    return lines
