"""Outputs against ONNX's expected outputs, with the case's own rtol/atol.

The test is ONNX's runner's (`onnx.backend.test.runner.Runner.assert_similar_outputs`): same
count, same shape, same dtype, strings equal, and otherwise numpy's `assert_allclose`,
|got - expected| <= atol + rtol * |expected| elementwise, bfloat16 compared in float32 with rtol
at least 2**-6 (two bfloat16 ULPs). Non-finite values are compared by position as in
`chipbench.accuracy`: a NaN matches only a NaN, an Inf only the same-signed Inf; the errors
reported are over the positions finite in both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from chipbench.accuracy import finite_positions


@dataclass(frozen=True)
class Comparison:
    """Worst case over the outputs: `max_abs` (the outputs' unit) and `max_rel` (|error| /
    |expected| where expected is non-zero, dimensionless) over finite positions; `problems`
    one line each for what failed (empty: within tolerance)."""

    max_abs: float
    max_rel: float
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        text = "; ".join(self.problems)
        return text if len(text) <= 400 else text[:397] + "..."


def compare_outputs(got: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], rtol: float,
                    atol: float) -> Comparison:
    """Compare every expected output by name; a missing output is a problem, never an exception."""
    worst_abs = worst_rel = 0.0
    problems: list[str] = []
    for name, ref in expected.items():
        if name not in got:
            problems.append(f"output '{name}' missing (got {', '.join(got) or 'none'})")
            continue
        out, ref = np.asarray(got[name]), np.asarray(ref)
        if out.shape != ref.shape:
            problems.append(f"output '{name}' has shape {out.shape}, expected {ref.shape}")
            continue
        if out.dtype != ref.dtype:
            problems.append(f"output '{name}' is {out.dtype}, expected {ref.dtype}")
            continue
        if ref.dtype == object or ref.dtype.kind in "SU":
            if not np.array_equal(out, ref):
                problems.append(f"output '{name}': {int(np.count_nonzero(out != ref))} value(s) differ")
            continue
        r = rtol
        if ref.dtype.name == "bfloat16":
            r = max(rtol, 2.0 ** -6)
        one_abs, one_rel, problem = _close(name, out, ref, r, atol)
        worst_abs, worst_rel = max(worst_abs, one_abs), max(worst_rel, one_rel)
        if problem:
            problems.append(problem)
    return Comparison(worst_abs, worst_rel, tuple(problems))


def _close(name: str, out: np.ndarray, ref: np.ndarray, rtol: float, atol: float) -> tuple[float, float, str | None]:
    o = out.astype(np.float64).ravel()
    e = ref.astype(np.float64).ravel()
    finite, mismatch = finite_positions(o, e)
    diff = np.abs(o[finite] - e[finite])
    scale = np.abs(e[finite])
    max_abs = float(diff.max(initial=0.0))
    nonzero = scale > 0
    max_rel = float((diff[nonzero] / scale[nonzero]).max(initial=0.0))
    outside = int(np.count_nonzero(diff > atol + rtol * scale))
    reasons = []
    if outside:
        reasons.append(f"{outside} of {o.size} value(s) outside rtol {rtol:g}, atol {atol:g} "
                       f"(max abs error {max_abs:.3g}, max rel error {max_rel:.3g})")
    if mismatch:
        reasons.append(f"{mismatch} value(s) NaN/Inf where the expected value is not, or the reverse")
    return max_abs, max_rel, f"output '{name}': " + "; ".join(reasons) if reasons else None
