"""What a cell cost the machine: peak memory, CPU use over the timed run, cold start, threads and
CPU affinity (the record's `resources` part), and `--pin CPUS` for the cell process.

Definitions (all measured in the cell's own process, outside the timed queries):
- `peak_rss_bytes`: the process's peak resident set over its life so far (load, compile,
  warm-up and timed run), from getrusage(RUSAGE_SELF).ru_maxrss, which Linux gives in KiB and
  macOS in bytes (getrusage(2)).
- `cpu`: over the timed run (warm-up included, as the loop runs it), the process's CPU time
  (user + system, every thread) over wall time: `cores_busy` = cpu_s / wall_s, and
  `utilisation` = cores_busy / the cores the process may use (its affinity mask), 0..1.
- `load_s`: wall seconds of `backend.compile(source, spec)` as the harness times it, from the
  call to a model ready to run (reading the model, building, creating the session, uploading
  and prepacking weights). `compile.seconds` is what the backend itself counts as compiling,
  which may leave out building the torch model or include a first compiling call
  (torch-compile); load_s is the cold-start figure a user waits for.
- `first_inference_s`: the first `run` after load, apart from warm latency (first-run effects:
  lazy allocation, kernel selection, page faults on the weights).
- `threads`: those the cell asked for (`requested`, None = the backend's default), those the
  backend reports it set (`backend`, read back from its session where it can), and the OS
  threads of the process at the end of the timed run (`process`).
- `affinity`: the CPUs the process may run on, as the OS reports them, and the `--pin` asked.
- `device_memory`: on a CUDA device, torch's peak allocation where torch drives the device,
  and NVML's count of this process's memory on it; absent elsewhere.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


class PinError(ValueError):
    """A --pin CPU list that cannot be used: bad syntax or CPUs this process may not run on."""


def check_run_options(pin: str | None) -> None:
    """`chipbench run`'s --pin and the CHIPBENCH_QUIET_CORES environment variable, checked
    before any cell runs: SuiteError (a usage error, exit 2) naming the flag or variable."""
    from chipbench.quiet import default_quiet_cores
    from chipbench.suite import SuiteError

    try:
        default_quiet_cores()
        if pin is not None:
            check_pin(pin)
    except ValueError as exc:
        raise SuiteError(str(exc).replace("pin ", "--pin ", 1) if pin is not None and str(exc).startswith("pin ")
                         else str(exc)) from None


def parse_cpus(text: str) -> tuple[int, ...]:
    """A Linux CPU list ("0,1", "0-3", "0-3,8") as sorted unique CPU numbers. PinError
    naming the bad part."""
    cpus: set[int] = set()
    if not isinstance(text, str) or not text.strip():
        raise PinError(f"pin {text!r}: give CPU numbers such as 0,1 or 0-3")
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise PinError(f"pin {text!r}: '{part}' is not a CPU number or range (e.g. 0,1 or 0-3)") from None
        if a < 0 or b < a:
            raise PinError(f"pin {text!r}: '{part}' is not a CPU range (low-high, low <= high)")
        cpus.update(range(a, b + 1))
    return tuple(sorted(cpus))


def allowed_cpus() -> tuple[int, ...]:
    """The CPUs this process may run on (its affinity mask; every CPU where the OS has none)."""
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


def check_pin(text: str) -> tuple[int, ...]:
    """`parse_cpus`, and every CPU one this process may run on: PinError naming the missing
    ones and the ones there are. Needs an OS that sets affinity (Linux)."""
    cpus = parse_cpus(text)
    if not hasattr(os, "sched_setaffinity"):
        raise PinError(f"pin {text}: this OS ({sys.platform}) does not let a process set its CPU affinity")
    allowed = allowed_cpus()
    missing = [c for c in cpus if c not in allowed]
    if missing:
        raise PinError(f"pin {text}: no CPU {', '.join(map(str, missing))} here "
                       f"(this machine lets chipbench use {format_cpus(allowed)})")
    return cpus


def format_cpus(cpus: tuple[int, ...] | list[int]) -> str:
    """Sorted CPU numbers as a Linux CPU list, ranges folded: (0, 1, 2, 5) -> "0-2,5"."""
    parts: list[str] = []
    cpus = sorted(cpus)
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        parts.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(parts)


def apply_pin(text: str | None) -> None:
    """Pin this process (and the threads and children it starts from now on) to the CPUs of
    `text`; nothing when None. PinError when they cannot be used here."""
    if text is None:
        return
    os.sched_setaffinity(0, check_pin(text))


def peak_rss_bytes() -> int | None:
    """This process's peak resident set in bytes (ru_maxrss: KiB on Linux, bytes on macOS)."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def process_threads() -> int | None:
    """OS threads of this process now (Linux /proc/self/task; psutil elsewhere)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        try:
            import psutil

            return psutil.Process().num_threads()
        except Exception:
            return None


@dataclass
class CpuUse:
    """Process CPU seconds (user + system, every thread) over wall seconds, over `cores`."""

    cpu_s: float = 0.0
    wall_s: float = 0.0
    cores: int = 1

    @property
    def cores_busy(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def utilisation(self) -> float:
        return self.cores_busy / self.cores if self.cores else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"cpu_s": round(self.cpu_s, 6), "wall_s": round(self.wall_s, 6), "cores": self.cores,
                "cores_busy": round(self.cores_busy, 4), "utilisation": round(self.utilisation, 4)}


@contextmanager
def cpu_use() -> Iterator[CpuUse]:
    """Measure this process's CPU use over the `with` block (os.times user + system)."""
    use = CpuUse(cores=len(allowed_cpus()))
    t0, w0 = os.times(), time.perf_counter()
    try:
        yield use
    finally:
        t1, w1 = os.times(), time.perf_counter()
        use.cpu_s = (t1.user - t0.user) + (t1.system - t0.system)
        use.wall_s = w1 - w0


def device_memory(device: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """On a CUDA device: torch's peak allocation (torch.cuda.max_memory_allocated) where torch
    already drives the device in this process, and NVML's count of this process's memory on
    it, each where present; None on any other device or where neither can be read."""
    if not device or device.get("kind") != "cuda":
        return None
    index = int(str(device.get("id", "cuda:0")).partition(":")[2] or 0)
    out: dict[str, Any] = {}
    torch = sys.modules.get("torch")  # never import torch for this: only if the backend did
    if torch is not None:
        try:
            if torch.cuda.is_initialized():
                out["torch_peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(index))
                out["torch_peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved(index))
        except Exception:
            pass
    try:
        from chipbench.gpu import nvml_handle, nvml_session

        with nvml_session() as nvml:
            handle, _ = nvml_handle(nvml, index)
            mine = [p for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid == os.getpid()]
            if mine and mine[0].usedGpuMemory is not None:
                out["nvml_process_used_bytes"] = int(mine[0].usedGpuMemory)
    except Exception:  # no pynvml, no NVML, or a container that hides process ids
        pass
    return out or None


@dataclass
class ResourceLog:
    """Collects a cell's resource figures as it goes; `to_dict()` is the record's `resources`."""

    pin: str | None = None
    threads_requested: int | None = None
    load_s: float | None = None
    first_inference_s: float | None = None
    backend_threads: Any = None
    cpu: CpuUse | None = None
    machine_load: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, device: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {
            "peak_rss_bytes": peak_rss_bytes(),
            "device_memory": device_memory(device),
            "cpu": self.cpu.to_dict() if self.cpu else None,
            "load_s": self.load_s,
            "first_inference_s": self.first_inference_s,
            "threads": {"requested": self.threads_requested, "backend": self.backend_threads,
                        "process": process_threads()},
            "affinity": {"cpus": format_cpus(allowed_cpus()), "count": len(allowed_cpus()), "pin": self.pin},
            "machine_load": self.machine_load,
            **self.extra,
        }
