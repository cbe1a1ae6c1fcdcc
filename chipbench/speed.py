"""Is the CPU as fast as when it was calibrated? A check the machine-quiet rule cannot make.

A shared host can slow a guest with nothing inside the guest showing it: other tenants on the
SMT siblings of its virtual CPUs, or the hypervisor descheduling them (steal time that some
hypervisors never report). chipbench.quiet sees only this machine's own processes; on such a
host the same cell has measured twice as slow from one process to the next with no other
process running.

The check times a fixed reference computation (`reference`: a few hundred single-threaded
numpy vector operations on L1-resident data, about 0.6 ms on a Zen 4 core) pinned to each usable
CPU in turn, best of `reps`, and divides the slowest CPU's time by the calibration: the fastest
time `chipbench probe` measured (`calibrate`, kept in the device profile's details as
`reference_loop_s`). A cell during which a CPU ran the reference slower than MAX_SLOWDOWN times
its calibrated time, before or after the timed run, fails the `machine-speed` rule and is NOISY
(chipbench.validity), as a busy machine is.

MAX_SLOWDOWN = 2.0: the calibration is the fastest the CPU ran (probe's best of 20), and on a
shared host the clock alone moves the loop by up to about 1.6x: on a 2-core Zen 4 cloud VM,
back-to-back checks of an idle machine read 0.55 ms and 0.9 ms (most likely a socket's boost
clock following its other tenants' load). Only a slowdown beyond that range, e.g. a virtual CPU
descheduled or sharing its core, makes a cell NOISY; the record keeps every check's slowdown, so
two cells can be seen to have run at different clocks.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from chipbench.validity import SPEED, Rule

MAX_SLOWDOWN = 2.0
REFERENCE_STEPS = 400  # multiply-add pairs over 2,048 float64 values: about 0.6 ms on a Zen 4 core


def reference() -> float:
    """The reference computation (returns its result's first value, so it cannot be skipped):
    REFERENCE_STEPS in-place multiply-adds over 2,048 float64 values, one thread."""
    import numpy as np

    y = np.ones(2048)
    a, b = np.full(2048, 0.999), np.full(2048, 1e-3)
    for _ in range(REFERENCE_STEPS):
        np.multiply(y, a, out=y)
        np.add(y, b, out=y)
    return float(y[0])


def _cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity on this platform: the CPU the thread is on
        return []


def per_cpu_seconds(reps: int = 3) -> dict[int, float]:
    """Best-of-`reps` seconds of `reference` on each usable CPU, this thread pinned to it in
    turn (its affinity is restored after). Where affinity cannot be set: {-1: seconds} unpinned."""
    def best() -> float:
        reference()  # warm: code and data in cache
        fastest = float("inf")
        for _ in range(reps):
            start = time.perf_counter()
            reference()
            fastest = min(fastest, time.perf_counter() - start)
        return fastest

    cpus = _cpus()
    if not cpus:
        return {-1: best()}
    old = os.sched_getaffinity(0)
    try:
        out = {}
        for cpu in cpus:
            os.sched_setaffinity(0, {cpu})
            out[cpu] = best()
        return out
    finally:
        os.sched_setaffinity(0, old)


def calibrate(reps: int = 20) -> float:
    """The calibration `chipbench probe` keeps: the fastest CPU's best of `reps` (seconds)."""
    return min(per_cpu_seconds(reps).values())


@dataclass(frozen=True)
class SpeedSample:
    """One check: seconds of the reference per CPU and `slowdown`, the slowest CPU's time over
    the calibrated time (1.0 = as fast as calibrated)."""

    seconds: dict[int, float]
    slowdown: float

    def to_dict(self) -> dict[str, Any]:
        return {"slowdown": round(self.slowdown, 3),
                "seconds_per_cpu": {str(k): round(v, 7) for k, v in self.seconds.items()}}


def sample_speed(calibrated_s: float, reps: int = 3) -> SpeedSample:
    """Check the CPUs now against `calibrated_s` (seconds, from `calibrate`)."""
    seconds = per_cpu_seconds(reps)
    return SpeedSample(seconds, max(seconds.values()) / calibrated_s)


def try_speed(calibrated_s: float | None) -> SpeedSample | None:
    """`sample_speed`, or None without a calibration (a device profile from before the check)."""
    if not calibrated_s or calibrated_s <= 0:
        return None
    try:
        return sample_speed(calibrated_s)
    except Exception:  # a missing figure is recorded as missing, never guessed
        return None


def speed_rule(start: SpeedSample | None, end: SpeedSample | None, judged: bool,
               max_slowdown: float = MAX_SLOWDOWN) -> Rule:
    """The `machine-speed` rule: passes when no CPU ran the reference more than `max_slowdown`
    times slower than calibrated at the start or at the end of the timed run. Not judged
    (passes, saying so) when the machine-quiet judgement is off (`judged` False) or there is no
    calibration (run `chipbench probe` again)."""
    if not judged:
        return Rule(SPEED, True, "CPU speed not judged (quiet_cores off)")
    if start is None or end is None:
        return Rule(SPEED, True, "CPU speed not checked (no calibration in the device profile: "
                                 "run `chipbench probe` again)")
    slow = [f"{when} {s.slowdown:.2f}x" for when, s in (("start", start), ("end", end)) if s.slowdown > max_slowdown]
    if slow:
        return Rule(SPEED, False, f"CPU slower than calibrated: the reference loop took {' and '.join(slow)} its "
                                  f"calibrated time (> {max_slowdown:g}x; a shared host's other tenants, "
                                  "unseen from inside); measure again")
    return Rule(SPEED, True)


def speed_dict(start: SpeedSample | None, end: SpeedSample | None, calibrated_s: float | None) -> dict[str, Any]:
    """The record's `resources.machine_load.speed`: both checks, the calibration and the limit."""
    return {"start": start.to_dict() if start else None, "end": end.to_dict() if end else None,
            "calibrated_s": calibrated_s, "max_slowdown": MAX_SLOWDOWN,
            "method": "fixed single-thread numpy loop pinned to each CPU, best of 3, over probe's best of 20"}
