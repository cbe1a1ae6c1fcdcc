"""Shared helpers for workload modules (no torch import at module level)."""

from __future__ import annotations

import numpy as np


def input_rng(seed: int, name: str) -> np.random.Generator:
    """RNG for `make_inputs`: seeded by `seed` and kept apart from the dataset splits' streams."""
    return np.random.default_rng([int(seed), 0x5EED, sum(name.encode())])


def output(outputs: dict[str, np.ndarray], name: str) -> np.ndarray:
    """One named output, or the only output when the backend named it differently."""
    if name in outputs:
        return np.asarray(outputs[name])
    if len(outputs) == 1:
        return np.asarray(next(iter(outputs.values())))
    raise KeyError(f"output '{name}' missing (got {', '.join(outputs)})")
