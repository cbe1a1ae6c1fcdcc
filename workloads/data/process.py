"""Multivariate process-sensor windows from a plant with a few hidden drivers.

Physics-flavoured procedure: a plant's many sensors (temperatures, pressures, flows) move
together because a few latent factors (feed rate, load, ambient, ...) drive them; each latent
is a slow AR(1) process and each sensor is a fixed linear mix of them plus its own noise. The
plant (mixing matrix, noise levels) is fixed by the seed and shared by every split.
Process states for classification: steady operation, a set-point change (a latent ramps to a
new level), control-loop oscillation (a latent hunts sinusoidally), valve stiction (stick-slip
staircase in a latent) and fouling (a group of sensors drifts away from the others).
Anomalies for detection: sensor drift (slow ramp off the correlation structure), spikes
(short large transients) and stuck sensors (a reading freezes).
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

NAME = "process-sensors"
VERSION = "1"
STATES = ("steady", "setpoint_change", "oscillation", "stiction", "fouling")
ANOMALIES = ("drift", "spike", "stuck")


def plant(seed: int, channels: int, factors: int) -> tuple[np.ndarray, np.ndarray]:
    """Mixing matrix [channels, factors] (rows unit-norm after noise) and noise std [channels]."""
    rng = np.random.default_rng([int(seed), 7919, channels, factors])
    w = rng.normal(size=(channels, factors)) * rng.uniform(0.3, 1.0, factors)
    noise = rng.uniform(0.1, 0.4, channels)
    scale = np.sqrt((w**2).sum(1) + noise**2)
    return w / scale[:, None], noise / scale


def _latents(rng: np.random.Generator, n: int, steps: int, factors: int) -> np.ndarray:
    a = 0.95
    e = rng.normal(0, np.sqrt(1 - a * a), (n, steps + 64, factors))
    z = lfilter([1.0], [1.0, -a], e, axis=1)[:, 64:]  # burn-in to stationarity
    return z


def states(rng: np.random.Generator, n: int, steps: int, channels: int, seed: int,
           factors: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Windows [n, steps, channels] float32 and process-state labels int64 (index in STATES)."""
    w, noise = plant(seed, channels, factors)
    y = rng.integers(0, len(STATES), n)
    z = _latents(rng, n, steps, factors)
    t = np.arange(steps, dtype=float)
    extra = np.zeros((n, steps, channels))
    for i in range(n):
        f = rng.integers(factors)
        s = STATES[y[i]]
        if s == "setpoint_change":
            t0, width = rng.uniform(0.2, 0.8) * steps, rng.uniform(2, 0.15 * steps)
            z[i, :, f] += rng.choice([-1, 1]) * rng.uniform(1.5, 3.0) / (
                1 + np.exp(-(t - t0) / width))
        elif s == "oscillation":
            period = rng.uniform(6, 32)
            z[i, :, f] += rng.uniform(0.8, 1.8) * np.sin(2 * np.pi * t / period + rng.uniform(0, 6.3))
        elif s == "stiction":  # valve sticks, force builds, slips: staircase around the demand
            demand = np.cumsum(rng.normal(0, 0.02, steps)) + rng.uniform(0.03, 0.08) * t * rng.choice([-1, 1])
            band, pos, out = rng.uniform(0.4, 0.8), demand[0], np.empty(steps)
            for k in range(steps):
                if abs(demand[k] - pos) > band:
                    pos = demand[k]
                out[k] = pos
            z[i, :, f] += out - out.mean()
        elif s == "fouling":
            group = rng.choice(channels, size=max(2, channels // 8), replace=False)
            slope = rng.choice([-1, 1], size=group.size) * rng.uniform(1.0, 2.5, group.size)
            extra[i][:, group] = (t / steps)[:, None] * slope
    x = z @ w.T + extra + rng.normal(size=(n, steps, channels)) * noise
    return x.astype(np.float32), y.astype(np.int64)


def anomalies(rng: np.random.Generator, n: int, steps: int, channels: int, seed: int,
              rate: float, factors: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Windows [n, steps, channels] float32 and labels int64 (1 = anomalous), normal
    operation being steady or set-point changes; `rate` is the anomalous fraction."""
    w, noise = plant(seed, channels, factors)
    z = _latents(rng, n, steps, factors)
    t = np.arange(steps, dtype=float)
    for i in range(n):
        if rng.random() < 0.3:
            t0 = rng.uniform(0.2, 0.8) * steps
            z[i, :, rng.integers(factors)] += rng.normal(0, 1.5) / (1 + np.exp(-(t - t0) / 3))
    x = z @ w.T + rng.normal(size=(n, steps, channels)) * noise
    y = (rng.random(n) < rate).astype(np.int64)
    for i in np.flatnonzero(y):
        kind = ANOMALIES[rng.integers(len(ANOMALIES))]
        k = rng.choice(channels, size=rng.integers(1, 4), replace=False)
        if kind == "drift":
            t0 = rng.uniform(0, 0.6) * steps
            ramp = np.clip((t - t0) / (steps - t0), 0, None)
            x[i][:, k] += ramp[:, None] * rng.choice([-1, 1], k.size) * rng.uniform(1.5, 3.0, k.size)
        elif kind == "spike":
            for _ in range(rng.integers(1, 4)):
                x[i, rng.integers(steps), rng.choice(k)] += rng.choice([-1, 1]) * rng.uniform(4, 8)
        else:
            t0 = int(rng.uniform(0.1, 0.6) * steps)
            x[i][t0:, k] = x[i][t0, k]
    return x.astype(np.float32), y
