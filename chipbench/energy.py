"""Energy a device used while a cell ran its timed queries: measured through NVML, never estimated.

NVML offers two readings (NVML API reference, "Device Queries"):
- `nvmlDeviceGetTotalEnergyConsumption`: the energy the GPU used since the driver loaded, in
  millijoules (Volta and later). The difference over the run is the energy: the exact method,
  preferred wherever the device supports it.
- `nvmlDeviceGetPowerUsage`: the board's power draw in milliwatts. On recent GPUs and drivers it
  is an average over the last second, so the integral of its samples over a short run lags the
  load: the fallback, used only where the counter is not supported.

Either way a background thread samples the power during the run (that gives the sample count,
and the integral when there is no counter). A device with neither reading gets no energy, and
the record says why: a TDP or a nameplate figure is never used in its place.

`meter_for(device)` is the harness's hook: a meter for a CUDA device, a no-op elsewhere. The
meter wraps the query callables so that every query run while it samples is counted, and
`result(batch)` divides the joules by queries × batch for joules per inference.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

COUNTER = "nvml total-energy counter (nvmlDeviceGetTotalEnergyConsumption, mJ)"
POWER = "nvml power samples (nvmlDeviceGetPowerUsage, mW), trapezoid integral"


class EnergyUnavailable(RuntimeError):
    """The device offers no energy reading (the message says why)."""


@dataclass(frozen=True)
class EnergyReading:
    """Energy over one sampled interval. `joules` (J) over `seconds` (s, host clock) gives
    `avg_watts` (W); `samples` counts the power readings taken; `method` says whether the
    joules came from the energy counter (COUNTER) or from integrating power samples (POWER)."""

    joules: float
    seconds: float
    avg_watts: float
    samples: int
    method: str
    interval_s: float  # the power sampling period (s)

    def per_inference(self, inferences: int) -> float:
        """Joules per inference (J): the whole interval's energy over `inferences` > 0."""
        if inferences <= 0:
            raise ValueError("inferences must be positive")
        return self.joules / inferences

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trapezoid_joules(samples: list[tuple[float, float]]) -> float:
    """∫ P dt over (seconds, watts) samples by the trapezoid rule, in joules (0 for < 2 samples)."""
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(samples, samples[1:]))


class EnergySampler:
    """A context manager that samples one NVML device's power on a background thread and reads
    its energy counter at entry and exit. The thread sleeps between samples: every
    `interval_s` seconds where the power samples are the measurement (no counter), every
    `counter_interval_s` where the counter is, so that it disturbs the timed queries less
    (it holds the GIL for one NVML call per sample).

    `nvml` is the `pynvml` module (or a fake with the same functions), already initialised;
    `handle` the device's NVML handle. After the `with` block, `reading` holds the
    EnergyReading. Raises EnergyUnavailable at entry when the device supports neither reading.
    """

    def __init__(self, nvml: Any, handle: Any, interval_s: float = 0.02, counter_interval_s: float = 0.1,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.nvml, self.handle, self.interval_s, self.clock = nvml, handle, interval_s, clock
        self.counter_interval_s = counter_interval_s
        self.samples: list[tuple[float, float]] = []  # (seconds, watts)
        self.reading: EnergyReading | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_mj: int | None = None
        self._t0 = 0.0

    def _counter_mj(self) -> int | None:
        try:
            return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except Exception:  # NVMLError_NotSupported on pre-Volta parts and some virtual GPUs
            return None

    def _power_w(self) -> float | None:
        try:
            return self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0
        except Exception:
            return None

    def _sample(self) -> None:
        watts = self._power_w()
        if watts is not None:
            self.samples.append((self.clock(), watts))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> EnergySampler:
        self._start_mj = self._counter_mj()
        if self._start_mj is None and self._power_w() is None:
            raise EnergyUnavailable("the device reports neither its energy counter nor its power draw")
        if self._start_mj is not None:
            self.interval_s = self.counter_interval_s
        self._t0 = self.clock()
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="chipbench-energy", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        seconds = self.clock() - self._t0
        end_mj = self._counter_mj() if self._start_mj is not None else None
        # a counter that did not move (a run shorter than its update period) falls back to power
        if end_mj is not None and end_mj >= self._start_mj and (end_mj > self._start_mj or len(self.samples) < 2):
            joules, method = (end_mj - self._start_mj) / 1000.0, COUNTER
        elif len(self.samples) >= 2:
            joules, method = trapezoid_joules(self.samples), POWER
        else:
            return  # no reading: `reading` stays None
        self.reading = EnergyReading(joules=joules, seconds=seconds,
                                     avg_watts=joules / seconds if seconds > 0 else 0.0,
                                     samples=len(self.samples), method=method, interval_s=self.interval_s)


class Meter:
    """The harness's view of an energy measurement around the timed queries: a context manager
    whose `timer`/`query` wrappers count the queries run while it samples.

    `result(batch)` is the record's `energy` entry (None when nothing was measured):
    joules, seconds, avg_watts, samples, method, queries, inferences (queries × batch) and
    joules_per_inference; `note` says why there is none where the device has no reading.
    """

    def __init__(self, open_sampler: Callable[[], Any] | None = None, device: str = "") -> None:
        self._open = open_sampler
        self.device = device
        self.queries = 0
        self.note: str | None = None
        self._sampler: EnergySampler | None = None
        self._session = None

    def timer(self, fn: Callable[[int], list[float]], untimed_calls: int = 0) -> Callable[[int], list[float]]:
        """Wraps a device timer (`fn(n)` runs n timed queries and `untimed_calls` more it does
        not time, e.g. time_evaluator's warm-up call): every query it runs is counted, since
        the device spends energy on all of them."""
        if self._open is None:  # nothing to measure: the callable stays as it was
            return fn
        def counted(n: int) -> list[float]:
            out = fn(n)
            self.queries += len(out) + untimed_calls
            return out
        return counted

    def query(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Wraps a one-query callable: every call is counted."""
        if self._open is None:
            return fn
        def counted():
            out = fn()
            self.queries += 1
            return out
        return counted

    def __enter__(self) -> Meter:
        if self._open is not None:
            try:
                self._session, self._sampler = self._open()
                self._sampler.__enter__()
            except Exception as exc:
                self.note = f"energy not measured on {self.device}: {type(exc).__name__}: {exc}"[:300]
                self._close_session()
                self._sampler = None
        return self

    def __exit__(self, *exc) -> None:
        if self._sampler is not None:
            self._sampler.__exit__(*exc)
            if self._sampler.reading is None:
                self.note = f"energy not measured on {self.device}: no reading during the run"
        self._close_session()

    def _close_session(self) -> None:
        if self._session is not None:
            self._session.__exit__(None, None, None)
            self._session = None

    def result(self, batch: int) -> dict[str, Any] | None:
        reading = self._sampler.reading if self._sampler is not None else None
        if reading is None or self.queries == 0:
            return None
        inferences = self.queries * batch
        return {**reading.to_dict(), "device": self.device, "queries": self.queries,
                "inferences": inferences, "joules_per_inference": reading.per_inference(inferences)}


def meter_for(device: dict[str, Any] | None, interval_s: float = 0.02) -> Meter:
    """The energy meter for the device a cell runs on (`provenance.device`: kind and id): NVML
    sampling for a CUDA device, a meter that measures nothing for any other kind (so CPU cells
    stay as they were). A CUDA device whose NVML is missing gets a meter whose `note` says so."""
    device = device or {}
    if device.get("kind") != "cuda":
        return Meter()
    index = int(str(device.get("id", "cuda:0")).partition(":")[2] or 0)

    def open_sampler():
        from chipbench.gpu import nvml_handle, nvml_session

        session = nvml_session()
        nvml = session.__enter__()
        try:
            handle, _ = nvml_handle(nvml, index)
        except Exception:
            session.__exit__(None, None, None)
            raise
        return session, EnergySampler(nvml, handle, interval_s)

    return Meter(open_sampler, device=str(device.get("id", f"cuda:{index}")))
