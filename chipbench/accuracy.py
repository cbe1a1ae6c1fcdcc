"""Fidelity to the FP32 reference: max-abs error, relative L2 and cosine similarity.

Non-finite values are compared by position before any error is computed: a NaN matches only a
NaN at the same position and an Inf only the same-signed Inf there; the errors are then taken
over the positions where both are finite. So one NaN can neither make a wrong output look
perfect (`max(0.0, nan)` is 0.0 in Python) nor make a backend that reproduces the reference's
NaN look wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """Fidelity gate against the FP32 reference on the same inputs: the largest absolute error,
    the largest relative L2 error and the smallest cosine similarity a VALID result may have."""

    max_abs: float
    rel_l2: float
    min_cosine: float

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tolerance:
        """From a record's or a manifest's `tolerance`; None (JSON's stand-in for an unbounded
        tolerance) becomes +inf (-inf for the cosine)."""
        def bound(key: str, unbounded: float) -> float:
            value = data.get(key)
            return unbounded if value is None else float(value)

        return cls(bound("max_abs", float("inf")), bound("rel_l2", float("inf")), bound("min_cosine", float("-inf")))


@dataclass(frozen=True)
class Fidelity:
    """Worst case over the outputs compared. Errors are over positions finite in both arrays.

    `nonfinite`: NaN/±Inf values in the reference; `nonfinite_mismatch`: positions where the
    output's NaN/±Inf pattern differs from the reference's; `problems`: outputs that could not
    be compared at all (missing, wrong shape), each a one-line reason."""

    max_abs: float = 0.0
    rel_l2: float = 0.0
    cosine: float = 1.0
    nonfinite: int = 0
    nonfinite_mismatch: int = 0
    outputs_compared: int = 0
    problems: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["problems"] = list(self.problems)
        return d


def fidelity(outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> Fidelity:
    """Compare every output the reference has; an output missing or of another shape is a
    problem (so the verdict cannot be VALID), never an exception."""
    worst = Fidelity()
    for name, ref in reference.items():
        if name not in outputs:
            worst = _with_problem(worst, f"output '{name}' missing (got {', '.join(outputs) or 'none'})")
            continue
        got, ref = np.asarray(outputs[name]), np.asarray(ref)
        if got.shape != ref.shape:
            worst = _with_problem(worst, f"output '{name}' has shape {got.shape}, reference {ref.shape}")
            continue
        one = compare(got, ref)
        worst = Fidelity(
            max_abs=max(worst.max_abs, one.max_abs),
            rel_l2=max(worst.rel_l2, one.rel_l2),
            cosine=min(worst.cosine, one.cosine),
            nonfinite=worst.nonfinite + one.nonfinite,
            nonfinite_mismatch=worst.nonfinite_mismatch + one.nonfinite_mismatch,
            outputs_compared=worst.outputs_compared + 1,
            problems=worst.problems,
        )
    return worst


def _with_problem(f: Fidelity, problem: str) -> Fidelity:
    return Fidelity(f.max_abs, f.rel_l2, f.cosine, f.nonfinite, f.nonfinite_mismatch, f.outputs_compared,
                    (*f.problems, problem))


def finite_positions(got: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, int]:
    """(mask of the positions finite in both flat float arrays, how many positions differ in
    their non-finite class): NaN matches only NaN, +Inf only +Inf, -Inf only -Inf, at the same
    place; a mismatch is a failure, never hidden by the errors over the finite values."""
    both = np.isfinite(got) & np.isfinite(ref)
    same_class = (np.isnan(ref) & np.isnan(got)) | (np.isinf(ref) & (ref == got))
    return both, int(np.count_nonzero(~both & ~same_class))


def compare(got: np.ndarray, ref: np.ndarray) -> Fidelity:
    """One output against its reference (same shape); any numeric or bool dtype, any rank."""
    got = np.asarray(got, np.float64).ravel()
    ref = np.asarray(ref, np.float64).ravel()
    both, mismatch = finite_positions(got, ref)
    g, r = got[both], ref[both]
    diff = g - r
    ref_norm, got_norm = float(np.linalg.norm(r)), float(np.linalg.norm(g))
    rel_l2 = float(np.linalg.norm(diff) / ref_norm) if ref_norm > 0 else float(np.linalg.norm(diff))
    if ref_norm == 0 or got_norm == 0:
        cosine = 1.0 if ref_norm == got_norm else 0.0
    else:
        cosine = float(np.dot(g, r) / (got_norm * ref_norm))
    return Fidelity(max_abs=float(np.max(np.abs(diff), initial=0.0)), rel_l2=rel_l2, cosine=cosine,
                    nonfinite=int(np.count_nonzero(~np.isfinite(ref))), nonfinite_mismatch=mismatch,
                    outputs_compared=1)


def check(fid: Fidelity, tol: Tolerance) -> list[str]:
    """Reasons the fidelity misses the tolerance; empty only when every output was compared,
    every non-finite value matched, and the errors are within `tol` (a Tolerance)."""
    reasons = list(fid.problems)
    if fid.nonfinite_mismatch:
        reasons.append(f"{fid.nonfinite_mismatch} value(s) NaN/Inf where the reference is not, or the reverse")
    if fid.max_abs > tol.max_abs:
        reasons.append(f"max_abs {fid.max_abs:.3g} > {tol.max_abs:.3g}")
    if fid.rel_l2 > tol.rel_l2:
        reasons.append(f"rel_l2 {fid.rel_l2:.3g} > {tol.rel_l2:.3g}")
    if fid.cosine < tol.min_cosine:
        reasons.append(f"cosine {fid.cosine:.6f} < {tol.min_cosine}")
    return reasons
