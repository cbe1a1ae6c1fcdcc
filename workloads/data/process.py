"""Multivariate process-sensor windows from a plant with a few hidden drivers.

Physics-flavoured procedure: a plant's many sensors (temperatures, pressures, flows) move
together because a few latent factors (feed rate, load, ambient, ...) drive them; each latent
is a slow AR(1) process and each sensor is a fixed linear mix of them plus its own noise. The
plant (mixing matrix, noise levels) is fixed by the seed and shared by every split.
Process states for classification (under closed-loop control the drivers wander only a little):
steady operation, a set-point change (a latent ramps to a new level), control-loop oscillation
(an over-tuned loop: a latent hunts sinusoidally), valve stiction (a sticky valve makes a
stick-slip limit cycle: square-ish jumps with plateaus, the classic stiction signature) and
fouling (a group of sensors, e.g. one exchanger's temperatures, drifts away from the others).
Anomalies for detection: sensor drift (slow ramp off the correlation structure), spikes
(short large transients) and stuck sensors (a reading freezes).
"""

from __future__ import annotations

import numpy as np

NAME = "process-sensors"
VERSION = "2"
STATES = ("steady", "setpoint_change", "oscillation", "stiction", "fouling")
ANOMALIES = ("drift", "spike", "stuck")


def plant(seed: int, channels: int, factors: int) -> tuple[np.ndarray, np.ndarray]:
    """Mixing matrix [channels, factors] (rows unit-norm after noise) and noise std [channels]."""
    rng = np.random.default_rng([int(seed), 7919, channels, factors])
    w = rng.normal(size=(channels, factors)) * rng.uniform(0.3, 1.0, factors)
    noise = rng.uniform(0.1, 0.4, channels)
    scale = np.sqrt((w**2).sum(1) + noise**2)
    return w / scale[:, None], noise / scale


def _latents(rng: np.random.Generator, n: int, steps: int, factors: int, a: float = 0.95,
             std: float = 1.0) -> np.ndarray:
    from scipy.signal import lfilter  # here: scipy.signal takes 2 s to import, a cached split needs none

    e = rng.normal(0, std * np.sqrt(1 - a * a), (n, steps + 64, factors))
    z = lfilter([1.0], [1.0, -a], e, axis=1)[:, 64:]  # burn-in to stationarity
    return z


def states(rng: np.random.Generator, n: int, steps: int, channels: int, seed: int,
           factors: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Windows [n, steps, channels] float32 and process-state labels int64 (index in STATES)."""
    w, noise = plant(seed, channels, factors)
    y = rng.integers(0, len(STATES), n)
    z = _latents(rng, n, steps, factors, a=0.97, std=0.5)
    t = np.arange(steps, dtype=float)
    extra = np.zeros((n, steps, channels))
    for i in range(n):
        f = rng.integers(factors)
        s = STATES[y[i]]
        sign = rng.choice([-1, 1])
        if s == "setpoint_change":
            t0, width = rng.uniform(0.2, 0.8) * steps, rng.uniform(1, 6)
            z[i, :, f] += sign * rng.uniform(2.0, 4.0) / (1 + np.exp(-(t - t0) / width))
        elif s == "oscillation":
            period = rng.uniform(8, 32)
            z[i, :, f] += rng.uniform(1.0, 2.0) * np.sin(2 * np.pi * t / period + rng.uniform(0, 6.3))
        elif s == "stiction":
            period, amp = rng.uniform(16, 48), rng.uniform(1.0, 2.0)
            phase = (t / period + rng.uniform(0, 1)) % 1.0
            # sticks on a plateau, then slips fast to the other side (smoothed square wave)
            z[i, :, f] += sign * amp * np.tanh(8 * np.sin(2 * np.pi * phase))
        elif s == "fouling":
            group = rng.choice(channels, size=max(2, channels // 8), replace=False)
            slope = sign * rng.uniform(1.5, 3.0, group.size)
            t0 = rng.uniform(0, 0.5) * steps
            extra[i][:, group] = (np.clip(t - t0, 0, None) / (steps - t0))[:, None] * slope
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
