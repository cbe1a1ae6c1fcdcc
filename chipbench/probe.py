"""Device ceilings: what this machine can attain (GEMM FLOP/s, STREAM triad bandwidth) and what
its datasheet arithmetic says it should (cores × SIMD lanes × FMA units × clock).

The roofline places every kernel and op against these numbers, so they are measured with the
best library we have (BLAS via numpy/torch) on all cores, best of several runs.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from chipbench.machine import cpuinfo, usable_cores
from chipbench.paths import atomic_write_text

# Instructions that make a precision native (not emulated) on x86; without them we skip it.
NATIVE_FLAGS = {
    "bf16": ("avx512_bf16", "amx_bf16"),
    "fp16": ("avx512_fp16", "amx_fp16"),
    "int8": ("avx512_vnni", "avx_vnni", "amx_int8"),
}


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int  # usable cores (affinity), which is what every benchmark here gets
    arch: str
    flags: tuple[str, ...]  # the ISA flags that decide peaks (not the whole cpuinfo list)
    mhz: float | None  # nominal clock from cpufreq max or /proc/cpuinfo (a VM shows the TSC rate)
    vendor: str = ""
    family: int | None = None
    kind: str = "cpu"  # "cuda": a GPU (then `cpu` is its name, `cores` its multiprocessors, `mhz` its max SM clock)

    @property
    def key(self) -> str:
        """Where its profile is saved: `<cpu-model>-<cores>c` for the host CPU, `cuda-<gpu-name>`
        for a GPU (identical GPUs share one profile), so a GPU never overwrites its host's."""
        if self.kind != "cpu":
            return device_key(self.kind, self.cpu)
        slug = re.sub(r"[^a-z0-9]+", "-", self.cpu.lower()).strip("-")
        return f"{slug}-{self.cores}c"


def device_key(kind: str, name: str) -> str:
    """The profile key of a non-CPU device of this kind and name, e.g. `cuda-nvidia-h200`."""
    return f"{kind}-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@dataclass
class DeviceProfile:
    machine: Machine
    peak_gflops: dict[str, float]  # measured attainable, per precision (int8 in GOP/s)
    bandwidth_gbps: float  # STREAM triad, STREAM byte counting (3 arrays, no write-allocate)
    theoretical_gflops: dict[str, float] = field(default_factory=dict)
    assumptions: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    quick: bool = False
    measured_at: str = ""

    @property
    def key(self) -> str:
        return self.machine.key

    def peak(self, precision: str = "fp32") -> float:
        return self.peak_gflops[precision]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeviceProfile:
        m = dict(d["machine"])
        m["flags"] = tuple(m["flags"])
        return cls(**{**d, "machine": Machine(**m)})


def read_machine() -> Machine:
    """CPU model, usable cores and ISA flags from /proc/cpuinfo (Linux), platform elsewhere."""
    info = cpuinfo()
    flags = set(info.get("flags", "").split())
    keep = {"avx", "avx2", "fma", "avx512f"} | {f for fs in NATIVE_FLAGS.values() for f in fs}
    mhz = float(info["cpu MHz"]) if "cpu MHz" in info else None
    try:  # on bare metal cpufreq knows the maximum (boost) clock; a VM usually has no cpufreq
        mhz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1000
    except (OSError, ValueError):
        pass
    return Machine(
        cpu=info.get("model name") or platform.processor() or platform.machine(),
        cores=usable_cores(),
        arch=platform.machine(),
        flags=tuple(sorted(flags & keep)),
        mhz=mhz,
        vendor=info.get("vendor_id", ""),
        family=int(info["cpu family"]) if info.get("cpu family", "").isdigit() else None,
    )


def fp32_flops_per_cycle(m: Machine) -> tuple[int, str]:
    """FP32 FLOP per cycle per core (FMA = 2 FLOP) and the assumption behind it."""
    f = set(m.flags)
    if "avx512f" in f and m.vendor == "AuthenticAMD" and m.family == 25:
        return 32, "Zen 4: 2 FMA pipes x 256-bit; AVX-512 is double-pumped, so 2 x 8 lanes x 2"
    if "avx512f" in f and m.vendor == "AuthenticAMD":
        return 64, "Zen 5+: 2 FMA pipes x 512-bit (full-width server parts)"
    if "avx512f" in f:
        return 64, "Intel AVX-512: 2 x 512-bit FMA units (some SKUs have 1: halve it)"
    if "fma" in f and "avx2" in f:
        return 32, "AVX2: 2 x 256-bit FMA units"
    if "avx" in f:
        return 16, "AVX without FMA: 1 add + 1 mul x 8 lanes"
    return 8, "SSE: 1 add + 1 mul x 4 lanes"


def theoretical_peaks(m: Machine) -> tuple[dict[str, float], str]:
    """cores × FLOP/cycle × clock; bf16 dot products (VDPBF16PS) at 2×, int8 VNNI at 4× fp32."""
    if not m.mhz:
        return {}, "clock unknown: no theoretical peak"
    per_cycle, why = fp32_flops_per_cycle(m)
    ghz = m.mhz / 1000
    peaks = {"fp32": m.cores * per_cycle * ghz}
    if has_native(m, "bf16"):
        peaks["bf16"] = 2 * peaks["fp32"]
    if has_native(m, "int8"):
        peaks["int8"] = 4 * peaks["fp32"]
    text = (
        f"{m.cores} cores x {per_cycle} FP32 FLOP/cycle ({why}) x {ghz:.3f} GHz "
        "(cpufreq max, else /proc/cpuinfo MHz: nominal, not boost; a VM reports the TSC rate); "
        "bf16 = 2x fp32 (pairwise dot products), int8 = 4x fp32 (VNNI 4-way dot products)"
    )
    return peaks, text


def has_native(m: Machine, precision: str) -> bool:
    return precision == "fp32" or bool(set(m.flags) & set(NATIVE_FLAGS.get(precision, ())))


def _best_seconds(fn: Callable[[], Any], repeats: int, clock: Callable[[], float] = time.perf_counter) -> float:
    fn()  # warm-up: thread pool start, page faults, packing buffers
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def per_core_fp32(n: int, repeats: int) -> float:
    """Single-thread GEMM GFLOP/s by this thread's CPU time: what one core attains while it
    runs, however busy the machine is (wall-clock peaks on a shared machine are not)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.rand(n, n), torch.rand(n, n)
        return 2.0 * n**3 / _best_seconds(lambda: a @ b, repeats, time.thread_time) / 1e9
    finally:
        torch.set_num_threads(threads)


def measure_gemm(precision: str, n: int, repeats: int) -> tuple[float, str]:
    """Best GFLOP/s of an n×n×n GEMM in `precision`, and which library gave it."""
    import numpy as np
    import torch

    flops = 2.0 * n**3
    if precision == "fp32":
        a, b = np.random.rand(n, n).astype(np.float32), np.random.rand(n, n).astype(np.float32)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        results = {
            "numpy": flops / _best_seconds(lambda: a @ b, repeats) / 1e9,
            "torch": flops / _best_seconds(lambda: ta @ tb, repeats) / 1e9,
        }
        lib = max(results, key=results.__getitem__)
        return results[lib], f"{lib} matmul"
    if precision in ("bf16", "fp16"):
        dt = torch.bfloat16 if precision == "bf16" else torch.float16
        ta, tb = torch.rand(n, n, dtype=dt), torch.rand(n, n, dtype=dt)
        return flops / _best_seconds(lambda: ta @ tb, repeats) / 1e9, "torch matmul"
    if precision == "int8":
        ta = torch.randint(-64, 64, (n, n), dtype=torch.int8)
        tb = torch.randint(-64, 64, (n, n), dtype=torch.int8)
        return flops / _best_seconds(lambda: torch._int_mm(ta, tb), repeats) / 1e9, "torch._int_mm (int32 acc)"
    raise ValueError(precision)


def llc_bytes() -> int:
    """Largest cache level's size (Linux sysfs); 32 MiB when unknown."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip()
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
        sizes.append(int(text.rstrip("KMG")) * mult)
    return max(sizes, default=32 << 20)


def measure_triad(n: int, repeats: int) -> float:
    """STREAM triad a = b + s*c in float64 on all cores (torch's fused, threaded add).

    GB/s counts 3 arrays × 8 bytes per element, STREAM's convention. Plain stores also read
    `a` into cache first (write-allocate), so DRAM moves 4/3 of that; both are in `details`.
    """
    import torch

    b, c = torch.rand(n, dtype=torch.float64), torch.rand(n, dtype=torch.float64)
    a = torch.empty_like(b)
    seconds = _best_seconds(lambda: torch.add(b, c, alpha=3.0, out=a), repeats)
    return 3 * 8 * n / seconds / 1e9


def measure_ceilings(quick: bool = False) -> DeviceProfile:
    """Measure attainable FLOP/s per native precision and triad bandwidth on all usable cores."""
    import torch

    machine = read_machine()
    threads = torch.get_num_threads()
    torch.set_num_threads(machine.cores)
    try:
        n, repeats = (512, 3) if quick else (2048, 7)
        peaks: dict[str, float] = {}
        details: dict[str, Any] = {"gemm_n": n, "repeats": repeats, "threads": machine.cores, "source": {}}
        skipped = {}
        for precision in ("fp32", "bf16", "fp16", "int8"):
            if not has_native(machine, precision):
                flags = "/".join(NATIVE_FLAGS[precision])
                skipped[precision] = f"no {flags}: the library would emulate it"
                continue
            peaks[precision], details["source"][precision] = measure_gemm(precision, n, repeats)
        # Each triad array 4x the last-level cache, as STREAM asks (quick: 1x, so 3x in all).
        elems = llc_bytes() // 8 if quick else llc_bytes() // 2
        bandwidth = measure_triad(elems, 3 if quick else 10)
    finally:
        torch.set_num_threads(threads)
    theory, assumptions = theoretical_peaks(machine)
    per_cycle, _ = fp32_flops_per_cycle(machine)
    from chipbench.speed import calibrate

    details.update(
        reference_loop_s=calibrate(),  # the machine-speed rule's calibration (chipbench.speed)
        skipped=skipped,
        per_core_fp32_gflops=per_core_fp32(n // 2, repeats),
        loadavg_1m=os.getloadavg()[0],  # > cores: other processes shared the machine
        triad_elements=elems,
        triad_bytes_per_element="24 (3 arrays x float64, STREAM convention, no write-allocate)",
        triad_write_allocate_gbps=bandwidth * 4 / 3,
        # the clock the measured FP32 peak implies at the assumed FLOP/cycle (boost in a VM)
        implied_fp32_ghz=peaks["fp32"] / (machine.cores * per_cycle),
    )
    return DeviceProfile(
        machine=machine,
        peak_gflops=peaks,
        bandwidth_gbps=bandwidth,
        theoretical_gflops=theory,
        assumptions=assumptions,
        details=details,
        quick=quick,
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def profile_path(results_dir: Path, key: str) -> Path:
    return Path(results_dir) / "device" / f"{key}.json"


def save_profile(profile: DeviceProfile, results_dir: Path) -> Path:
    path = profile_path(results_dir, profile.key)
    atomic_write_text(path, json.dumps(profile.to_dict(), indent=2) + "\n")
    return path


def load_profile(results_dir: Path, machine: Machine | None = None) -> DeviceProfile | None:
    """The profile saved for this machine (or `machine`), None when there is none yet."""
    return _load(profile_path(results_dir, (machine or read_machine()).key))


def _load(path: Path) -> DeviceProfile | None:
    if not path.exists():
        return None
    return DeviceProfile.from_dict(json.loads(path.read_text()))


def ceilings_lookup(results_dir: Path) -> Callable[[dict[str, Any] | None], DeviceProfile | None]:
    """`load_profile_for` over many records: each device's profile file is read once."""
    seen: dict[tuple, DeviceProfile | None] = {}

    def lookup(device: dict[str, Any] | None) -> DeviceProfile | None:
        kind = (device or {}).get("kind", "cpu")
        key = (kind, None if kind == "cpu" else (device or {}).get("name"))
        if key not in seen:
            seen[key] = load_profile_for(results_dir, device)
        return seen[key]

    return lookup


def load_profile_for(results_dir: Path, device: dict[str, Any] | None) -> DeviceProfile | None:
    """The ceilings of the device a record ran on (`provenance.device`: kind, name): a GPU's own
    profile (`chipbench probe` on a machine with that GPU) for a CUDA device, this machine's
    for the CPU or a record that names no device; None when that profile was never measured."""
    kind = (device or {}).get("kind", "cpu")
    if kind == "cpu":
        return load_profile(results_dir)
    name = (device or {}).get("name")
    return _load(profile_path(results_dir, device_key(kind, name))) if name else None
