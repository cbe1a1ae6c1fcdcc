"""Rolling-bearing vibration windows (accelerometer on the bearing housing).

Physics: a localised fault makes the rolling elements strike it once per pass, so the signal
holds an impulse train at the bearing's characteristic defect frequency (BPFO outer race,
BPFI inner race, BSF ball; computed from the bearing geometry and a random shaft speed), with
1-2 % slip jitter. Each impact rings a structural resonance (damped sinusoid, 2.5-4.5 kHz).
Inner-race and ball faults rotate through the load zone, so their impacts are amplitude-
modulated at shaft speed and cage speed respectively. Every class carries shaft harmonics
(imbalance, misalignment), broadband noise at a random SNR and a random fault severity.
"""

from __future__ import annotations

import numpy as np

NAME = "bearing-vibration"
VERSION = "1"
CLASSES = ("normal", "outer_race", "inner_race", "ball")

FS = 12_000.0  # Hz sample rate (CWRU drive-end rig)
# SKF 6205-2RS: 9 balls, ball 7.94 mm, pitch 39.04 mm, contact angle 0
N_BALLS, BALL_D, PITCH_D, CONTACT = 9, 7.94, 39.04, 0.0


def fault_orders() -> dict[str, float]:
    """Defect frequencies as multiples of shaft speed, from the bearing geometry."""
    r = BALL_D / PITCH_D * np.cos(CONTACT)
    return {
        "bpfo": N_BALLS / 2 * (1 - r),
        "bpfi": N_BALLS / 2 * (1 + r),
        "bsf": PITCH_D / (2 * BALL_D) * (1 - r * r),
        "ftf": 0.5 * (1 - r),
    }


def generate(rng: np.random.Generator, n: int, window: int = 2048,
             classes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`n` windows, shape [n, 1, window] float32, and labels int64 (index into CLASSES)."""
    orders = fault_orders()
    y = rng.integers(0, len(CLASSES), n) if classes is None else np.asarray(classes)
    t = np.arange(window) / FS
    ring_len = 512
    tr = np.arange(ring_len) / FS
    x = np.zeros((n, window))
    for i in range(n):
        fr = rng.uniform(20.0, 30.0)  # shaft speed, Hz (1200-1800 rpm)
        sig = (rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * fr * t + rng.uniform(0, 2 * np.pi))
               + rng.uniform(0.02, 0.1) * np.sin(2 * np.pi * 2 * fr * t + rng.uniform(0, 6.3)))
        c = CLASSES[y[i]]
        if c != "normal":
            f_def = fr * {"outer_race": orders["bpfo"], "inner_race": orders["bpfi"],
                          "ball": orders["bsf"]}[c]
            period = FS / f_def
            start = rng.uniform(-period, 0)
            k = np.arange(int(window / period) + 3)
            times = start + k * period + rng.normal(0, 0.015 * period, k.size)  # slip
            keep = (times >= -ring_len) & (times < window)
            times = times[keep]
            amp = np.ones(times.size)
            if c == "inner_race":  # passes through the load zone once per shaft turn
                amp = 1.0 + 0.8 * np.cos(2 * np.pi * fr * times / FS + rng.uniform(0, 6.3))
            elif c == "ball":  # ball carried round at cage speed
                amp = 1.0 + 0.8 * np.cos(2 * np.pi * fr * orders["ftf"] * times / FS
                                         + rng.uniform(0, 6.3))
            amp = np.clip(amp, 0.05, None) * rng.uniform(0.3, 1.5)  # severity
            amp *= rng.lognormal(0.0, 0.2, times.size)  # impact-to-impact scatter
            fn, zeta = rng.uniform(2500.0, 4500.0), rng.uniform(0.03, 0.08)
            ring = np.exp(-zeta * 2 * np.pi * fn * tr) * np.sin(
                2 * np.pi * fn * np.sqrt(1 - zeta**2) * tr)
            imp = np.zeros(window + ring_len)
            idx = np.floor(times).astype(int) + ring_len  # shifted so early impacts ring in
            np.add.at(imp, idx, amp)
            sig = sig + np.convolve(imp, ring)[ring_len:ring_len + window]
        sig = sig + rng.normal(0.0, rng.uniform(0.05, 0.25), window)
        x[i] = sig
    return x[:, None, :].astype(np.float32), y.astype(np.int64)
