"""Steel-strip surface images from a line-scan camera, with defects and pixel masks.

Physics-flavoured procedure: the surface is rolled steel, so its texture is band-limited noise
stretched along the rolling direction (grain) plus fine sensor noise, under uneven lighting
(gradient and vignetting). Defects: scratches (thin straight bright or dark lines from
handling), pits (small dark craters with a bright rim), inclusions (dark slag streaks elongated
by rolling, ragged edges), cracks (thin dark persistent random walks, sometimes branching) and
stains (large, smooth, low-contrast tinted blotches). Each defect also yields its pixel mask.
"""

from __future__ import annotations

import numpy as np

NAME = "steel-surface"
VERSION = "2"
CLASSES = ("ok", "scratch", "pit", "inclusion", "crack", "stain")


def _texture(rng: np.random.Generator, s: int) -> np.ndarray:
    from scipy import ndimage  # here, as in _defect: a cached split needs no scipy (seconds to import)

    grain = ndimage.gaussian_filter(rng.normal(size=(s, s)), sigma=(s * 0.004 + 0.3, s * 0.03))
    blotch = ndimage.gaussian_filter(rng.normal(size=(s, s)), sigma=s * 0.06)
    img = 0.5 + 0.06 * grain / (grain.std() + 1e-9) + 0.03 * blotch / (blotch.std() + 1e-9)
    yy, xx = np.mgrid[0:s, 0:s] / (s - 1) - 0.5
    gx, gy = rng.uniform(-0.15, 0.15, 2)
    img = img * (1 + gx * xx + gy * yy) * (1 - rng.uniform(0.1, 0.3) * (xx**2 + yy**2))
    return img


def _segment_dist(s: int, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0:s, 0:s].astype(float)
    d = p1 - p0
    t = np.clip(((xx - p0[0]) * d[0] + (yy - p0[1]) * d[1]) / (d @ d + 1e-9), 0, 1)
    return np.hypot(xx - (p0[0] + t * d[0]), yy - (p0[1] + t * d[1]))


def _defect(rng: np.random.Generator, s: int, c: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(intensity delta [s,s], binary mask [s,s], blue-channel tint factor)."""
    from scipy import ndimage

    yy, xx = np.mgrid[0:s, 0:s].astype(float)
    tint = 1.0
    if c == "scratch":
        p0 = rng.uniform(0.1, 0.9, 2) * s
        ang, length = rng.uniform(0, np.pi), rng.uniform(0.3, 0.8) * s
        p1 = np.clip(p0 + length * np.array([np.cos(ang), np.sin(ang)]), 0, s - 1)
        w = max(0.8, s / 120) * rng.uniform(0.8, 1.5)
        prof = np.exp(-0.5 * (_segment_dist(s, p0, p1) / w) ** 2)
        delta = prof * rng.choice([-1, 1]) * rng.uniform(0.15, 0.3)
        mask = prof > 0.3
    elif c == "pit":
        delta, mask = np.zeros((s, s)), np.zeros((s, s), bool)
        cx, cy = rng.uniform(0.15, 0.85, 2) * s
        for _ in range(rng.integers(1, 4)):
            px, py = cx + rng.normal(0, 0.06 * s), cy + rng.normal(0, 0.06 * s)
            r = max(1.2, rng.uniform(0.015, 0.04) * s)
            d = np.hypot(xx - px, yy - py) / r
            delta += -rng.uniform(0.25, 0.4) * np.exp(-d**4) + 0.12 * np.exp(-((d - 1.2) / 0.25) ** 2)
            mask |= d < 1.0
    elif c == "inclusion":
        cx, cy = rng.uniform(0.2, 0.8, 2) * s
        a, b = rng.uniform(0.08, 0.22) * s, max(1.5, rng.uniform(0.015, 0.04) * s)
        rough = ndimage.gaussian_filter(rng.normal(size=(s, s)), s * 0.02)
        rough /= rough.std() + 1e-9
        d = np.sqrt(((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2) + 0.25 * rough
        mask = d < 1.0
        inner = ndimage.gaussian_filter(rng.normal(size=(s, s)), 0.7)
        delta = (d < 1.0) * (-rng.uniform(0.15, 0.3) + 0.05 * inner / (inner.std() + 1e-9))
        delta = ndimage.gaussian_filter(delta, 0.6)
    elif c == "crack":
        mask = np.zeros((s, s), bool)
        for branch in range(rng.integers(1, 3)):
            if branch == 0:
                p = rng.uniform(0.2, 0.8, 2) * s
                ang = rng.uniform(0, 2 * np.pi)
            else:
                pts = np.argwhere(mask)
                p = pts[rng.integers(len(pts))][::-1].astype(float)
                ang += rng.choice([-1, 1]) * rng.uniform(0.5, 1.2)
            for _ in range(int(rng.uniform(0.3, 0.6) * s / (1 + branch))):
                ang += rng.normal(0, 0.25)
                p = p + np.array([np.cos(ang), np.sin(ang)])
                ix, iy = int(round(p[0])), int(round(p[1]))
                if not (0 <= ix < s and 0 <= iy < s):
                    break
                mask[iy, ix] = True
        if s >= 96:
            mask = ndimage.binary_dilation(mask)
        delta = -rng.uniform(0.25, 0.4) * ndimage.gaussian_filter(mask.astype(float), 0.5) / 0.6
        delta = np.maximum(delta, -0.45)
    elif c == "stain":
        cx, cy = rng.uniform(0.25, 0.75, 2) * s
        r = rng.uniform(0.12, 0.25) * s
        rough = ndimage.gaussian_filter(rng.normal(size=(s, s)), s * 0.05)
        rough /= rough.std() + 1e-9
        prof = np.exp(-0.5 * (np.hypot(xx - cx, yy - cy) / r + 0.15 * rough) ** 2 * 2.5)
        delta = -rng.uniform(0.15, 0.3) * prof
        mask = prof > 0.5
        tint = rng.uniform(0.4, 0.7)  # rust/oil: blue drops more than red
    else:
        return np.zeros((s, s)), np.zeros((s, s), bool), 1.0
    return delta, mask, tint


def generate(rng: np.random.Generator, n: int, size: int = 224,
             classes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images [n, 3, size, size] float32 in about [0, 1], class labels int64 [n], and masks
    int64 [n, size, size] (0 = background, k = the CLASSES index of the defect)."""
    y = rng.integers(0, len(CLASSES), n) if classes is None else np.asarray(classes)
    imgs = np.empty((n, 3, size, size), np.float32)
    masks = np.zeros((n, size, size), np.int64)
    for i in range(n):
        base = _texture(rng, size)
        delta, mask, tint = _defect(rng, size, CLASSES[y[i]])
        gain = np.array([1.0, 0.98, 0.95]) * rng.uniform(0.9, 1.1)
        for ch in range(3):
            d = delta * (tint if ch == 2 else (0.5 * (1 + tint) if ch == 1 else 1.0))
            imgs[i, ch] = (base + d) * gain[ch]
        imgs[i] += rng.normal(0, 0.01, (3, size, size))
        masks[i][mask] = y[i]
    np.clip(imgs, 0.0, 1.0, out=imgs)
    return imgs, y.astype(np.int64), masks
