"""Is the machine quiet enough to measure on? Other processes' CPU use at the start and end of a
timed run, and the load average, kept with the record; a busy machine makes the cell NOISY.

How "others" is measured: over a short window (`window_s`, 0.2 s by default, outside the timed
run) the machine's busy CPU time is read from the kernel's counters (`psutil.cpu_times()`,
/proc/stat on Linux: user + nice + system + irq + softirq + steal; guest time is inside user)
and the CPU time of this process and its children (the cell's own thread pools, which may
still spin after a query) is subtracted. What is left, divided by the window, is how many
cores other work kept busy: other processes, the kernel's own threads, and time the hypervisor
gave to other guests (steal, reported apart). This counts short-lived processes too, which
sampling a process list would miss.

The 1-minute load average is recorded as context, not judged: it is a damped average over the
last minute that counts this cell's own threads and the cell before it.

Threshold: `max_others_cores`, 0.25 cores by default (the cell's settings carry it as
`quiet_cores`). On a quiet Linux machine other work stays far below 0.05 cores; a quarter of a
core taken from a benchmark that uses every core of a 2-core machine is 12.5 % of its compute,
well above the 5 % a comparison should be able to resolve. The environment variable
CHIPBENCH_QUIET_CORES sets the default (a number, or "off" to neither sample nor judge, e.g. on
a shared CI runner, where the verdict should speak of the backend alone).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from chipbench.validity import QUIET, Rule

DEFAULT_MAX_OTHERS_CORES = 0.25
DEFAULT_WINDOW_S = 0.2
QUIET_ENV = "CHIPBENCH_QUIET_CORES"


def default_quiet_cores() -> float | None:
    """The machine-quiet threshold in cores: CHIPBENCH_QUIET_CORES when set (a number >= 0, or
    "off"/"none" for None: neither sampled nor judged), else DEFAULT_MAX_OTHERS_CORES. ValueError
    naming the variable when it is neither."""
    text = os.environ.get(QUIET_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_OTHERS_CORES
    if text.lower() in ("off", "none"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{QUIET_ENV}={text!r}: give a number of cores (e.g. 0.25) or 'off'") from None
    if not value >= 0:
        raise ValueError(f"{QUIET_ENV}={text!r}: must be >= 0")
    return value


@dataclass(frozen=True)
class LoadSample:
    """The machine's load at one moment: `others_cores` cores kept busy by work other than this
    process tree over `window_s` seconds (of which `steal_cores` by the hypervisor's other
    guests), `others_share` = others_cores / `cores` (the machine's online CPUs), and `load1`,
    the kernel's 1-minute load average (None where there is none)."""

    others_cores: float
    steal_cores: float
    others_share: float
    cores: int
    load1: float | None
    window_s: float

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _busy_seconds(times) -> tuple[float, float]:
    busy = sum(getattr(times, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))
    return busy, getattr(times, "steal", 0.0)


def _own_tree_seconds() -> float:
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:  # gone meanwhile
            pass
    return total


def sample_load(window_s: float = DEFAULT_WINDOW_S, sleep: Callable[[float], None] = time.sleep) -> LoadSample:
    """Measure the machine's load now, over `window_s` seconds (this process sleeps meanwhile).
    Needs psutil (RuntimeError when it is missing)."""
    try:
        import psutil
    except ImportError:
        raise RuntimeError("psutil is not installed") from None
    cores = psutil.cpu_count() or 1
    busy0, steal0 = _busy_seconds(psutil.cpu_times())
    own0 = _own_tree_seconds()
    t0 = time.monotonic()
    sleep(window_s)
    busy1, steal1 = _busy_seconds(psutil.cpu_times())
    own1 = _own_tree_seconds()
    wall = max(time.monotonic() - t0, 1e-9)
    others = min(max((busy1 - busy0) - (own1 - own0), 0.0) / wall, float(cores))  # counters tick at 10 ms
    try:
        load1 = os.getloadavg()[0]
    except (OSError, AttributeError):
        load1 = None
    return LoadSample(others, max(steal1 - steal0, 0.0) / wall, others / cores, cores, load1, wall)


def quiet_rule(start: LoadSample | None, end: LoadSample | None, max_others_cores: float | None) -> Rule:
    """Machine quiet enough: passes when other work kept at most `max_others_cores` cores busy
    at both the start and the end of the timed run. None (quiet_cores off): the rule passes,
    saying it was not judged; a missing sample (no psutil) passes, saying so."""
    samples = {"start": start, "end": end}
    if max_others_cores is None:
        return Rule(QUIET, True, "machine load not judged (quiet_cores off)")
    if any(s is None for s in samples.values()):
        return Rule(QUIET, True, "machine load not measured (psutil unavailable)")
    busy = [f"{when} {s.others_cores:.2f} cores" + (f" ({s.steal_cores:.2f} stolen by the hypervisor)"
                                                      if s.steal_cores >= 0.01 else "")
            for when, s in samples.items() if s.others_cores > max_others_cores]
    if busy:
        return Rule(QUIET, False, f"machine busy: other work used {' and '.join(busy)} "
                                  f"(> quiet_cores={max_others_cores:g}); measure again on a quiet machine")
    return Rule(QUIET, True)


def machine_load_dict(start: LoadSample | None, end: LoadSample | None, max_others_cores: float | None) -> dict:
    """The record's `resources.machine_load`: both samples and the threshold applied."""
    return {"start": start.to_dict() if start else None, "end": end.to_dict() if end else None,
            "max_others_cores": max_others_cores, "method": "busy CPU time (/proc/stat) minus this process tree's"}


def try_sample(window_s: float = DEFAULT_WINDOW_S) -> LoadSample | None:
    """`sample_load`, or None where it cannot be measured (no psutil, a platform without the
    counters): a missing figure is recorded as missing, never guessed."""
    try:
        return sample_load(window_s)
    except Exception:
        return None
