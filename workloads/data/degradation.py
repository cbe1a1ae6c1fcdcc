"""Run-to-failure degradation windows for remaining-useful-life (RUL) estimation.

Physics-flavoured procedure after NASA's C-MAPSS turbofan data: every unit has its own life
(130-360 cycles) and a wear onset (20-60 % of life); past onset a health index grows
exponentially (wear accelerates) and reaches the failure threshold at end of life. Fourteen
sensors respond to it with fixed sensor-specific gains (some insensitive), on top of the
operating condition of each cycle (two settings such as altitude and throttle, random per
cycle, which shift every sensor) and measurement noise. A sample is the last `window` cycles
seen so far; its label is the piecewise-linear RUL target min(cycles to failure, 125).
"""

from __future__ import annotations

import numpy as np

NAME = "run-to-failure"
VERSION = "1"
RUL_CAP = 125.0
OP_SETTINGS = 2


def fleet(seed: int, sensors: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sensor model shared by every unit: degradation gains [sensors], operating-condition
    gains [sensors, OP_SETTINGS], noise std [sensors]."""
    rng = np.random.default_rng([int(seed), 104729, sensors])
    gain = rng.choice([-1, 1], sensors) * rng.uniform(0.5, 2.0, sensors)
    gain[rng.choice(sensors, size=max(1, sensors // 4), replace=False)] *= 0.05  # insensitive
    op = rng.normal(0, 1.0, (sensors, OP_SETTINGS))
    noise = rng.uniform(0.15, 0.4, sensors)
    return gain, op, noise


def generate(rng: np.random.Generator, n: int, window: int = 30, sensors: int = 14,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Windows [n, window, OP_SETTINGS + sensors] float32 (settings first, then sensors, all
    roughly standardised) and RUL labels float32 [n] in cycles, capped at RUL_CAP."""
    gain, opg, noise = fleet(seed, sensors)
    x = np.empty((n, window, OP_SETTINGS + sensors), np.float32)
    rul = np.empty(n, np.float32)
    for i in range(n):
        life = rng.uniform(130, 360)
        onset = life * rng.uniform(0.2, 0.6)
        rate = rng.uniform(3.0, 6.0) / (life - onset)  # e-folds of wear between onset and end
        end = rng.uniform(window, life)  # the current cycle: the window ends here
        cyc = end - window + 1 + np.arange(window)
        health = np.expm1(rate * np.clip(cyc - onset, 0, None)) / np.expm1(rate * (life - onset))
        unit_gain = gain * rng.lognormal(0, 0.1, sensors)  # unit-to-unit variation
        settings = rng.normal(0, 1.0, (window, OP_SETTINGS))
        s = (health[:, None] * unit_gain * 2.0 + settings @ opg.T
             + rng.normal(0, 1, (window, sensors)) * noise + rng.normal(0, 0.1, sensors))
        x[i, :, :OP_SETTINGS] = settings
        x[i, :, OP_SETTINGS:] = s
        rul[i] = min(life - end, RUL_CAP)
    return x, rul
