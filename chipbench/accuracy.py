"""Fidelity to the FP32 torch reference: max-abs error, relative L2 and cosine similarity."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Fidelity:
    max_abs: float
    rel_l2: float
    cosine: float

    def to_dict(self) -> dict:
        return asdict(self)


def fidelity(outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> Fidelity:
    """Worst case over all outputs (every output the reference has must be present)."""
    worst = Fidelity(max_abs=0.0, rel_l2=0.0, cosine=1.0)
    for name, ref in reference.items():
        if name not in outputs:
            raise ValueError(f"output '{name}' missing (got {', '.join(outputs) or 'none'})")
        got = np.asarray(outputs[name])
        if got.shape != ref.shape:
            raise ValueError(f"output '{name}' has shape {got.shape}, reference {ref.shape}")
        one = _compare(got.astype(np.float64).ravel(), np.asarray(ref, np.float64).ravel())
        worst = Fidelity(
            max_abs=max(worst.max_abs, one.max_abs),
            rel_l2=max(worst.rel_l2, one.rel_l2),
            cosine=min(worst.cosine, one.cosine),
        )
    return worst


def _compare(got: np.ndarray, ref: np.ndarray) -> Fidelity:
    if not np.all(np.isfinite(got)):
        return Fidelity(max_abs=float("inf"), rel_l2=float("inf"), cosine=-1.0)
    diff = got - ref
    ref_norm = np.linalg.norm(ref)
    got_norm = np.linalg.norm(got)
    rel_l2 = float(np.linalg.norm(diff) / ref_norm) if ref_norm > 0 else float(np.linalg.norm(diff))
    if ref_norm == 0 or got_norm == 0:
        cosine = 1.0 if ref_norm == got_norm else 0.0
    else:
        cosine = float(np.dot(got, ref) / (got_norm * ref_norm))
    return Fidelity(max_abs=float(np.max(np.abs(diff), initial=0.0)), rel_l2=rel_l2, cosine=cosine)


def check(fid: Fidelity, tol) -> list[str]:
    """Reasons the fidelity misses the tolerance; empty when it passes."""
    reasons = []
    if fid.max_abs > tol.max_abs:
        reasons.append(f"max_abs {fid.max_abs:.3g} > {tol.max_abs:.3g}")
    if fid.rel_l2 > tol.rel_l2:
        reasons.append(f"rel_l2 {fid.rel_l2:.3g} > {tol.rel_l2:.3g}")
    if fid.cosine < tol.min_cosine:
        reasons.append(f"cosine {fid.cosine:.6f} < {tol.min_cosine}")
    return reasons
