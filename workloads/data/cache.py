"""Dataset splits, generated in fixed-size blocks and cached under `cache_dir("data", ...)`.

The cache entry's full key (generator name, version, parameters, seed, split, n) is stored as
JSON beside the arrays and compared exactly on load; the file name hash only locates it.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from chipbench.paths import atomic_write_bytes, atomic_write_text, cache_dir

SPLITS = ("train", "calibration", "test")
BLOCK = 64  # samples per independently seeded block


@dataclass(frozen=True)
class Generated:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray


# fn(rng, n, split) -> (inputs, labels) for n samples
BlockFn = Callable[[np.random.Generator, int, str], tuple[dict[str, np.ndarray], np.ndarray]]


def split_rng(seed: int, split: str, block: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), SPLITS.index(split), int(block)])


def _generate(fn: BlockFn, seed: int, split: str, n: int) -> Generated:
    ins: list[dict[str, np.ndarray]] = []
    labs: list[np.ndarray] = []
    for b in range((n + BLOCK - 1) // BLOCK):
        m = min(BLOCK, n - b * BLOCK)
        x, y = fn(split_rng(seed, split, b), m, split)
        ins.append(x)
        labs.append(y)
    inputs = {k: np.concatenate([d[k] for d in ins]) for k in ins[0]}
    return Generated(inputs, np.concatenate(labs))


def _canon(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, default=list)


def generate_split(name: str, version: str, params: dict[str, Any], seed: int, split: str,
                   n: int, fn: BlockFn, use_cache: bool = True) -> Generated:
    """The first `n` samples of `split`, from the cache when its stored key matches exactly."""
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
    key = {"generator": name, "version": version, "params": params, "seed": int(seed),
           "split": split, "n": int(n), "block": BLOCK}
    text = _canon(key)
    if not use_cache:
        return _generate(fn, seed, split, n)
    folder = cache_dir("data", name)
    stem = hashlib.sha256(text.encode()).hexdigest()[:24]
    arr_path, key_path = folder / f"{stem}.npz", folder / f"{stem}.key.json"
    if arr_path.exists() and key_path.exists():
        try:
            if _canon(json.loads(key_path.read_text())) == text:
                with np.load(arr_path, allow_pickle=False) as z:
                    inputs = {k[3:]: z[k] for k in z.files if k.startswith("in_")}
                    return Generated(inputs, z["labels"])
        except (OSError, ValueError, KeyError):
            pass  # damaged entry: regenerate and overwrite
    g = _generate(fn, seed, split, n)
    buf = io.BytesIO()
    np.savez(buf, labels=g.labels, **{f"in_{k}": v for k, v in g.inputs.items()})
    atomic_write_bytes(arr_path, buf.getvalue())
    atomic_write_text(key_path, json.dumps(key, sort_keys=True, indent=1, default=list))
    return g
