"""Why an int8 model is slower than its fp32 original on ONNX Runtime: the operator families
whose time grew, from ORT's per-op profiles of both (chipbench.backends.ort_profile)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

Arrays = dict[str, np.ndarray]


QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


def family_times(profile) -> dict[str, float]:
    """ms per operator family of an ORT per-op profile (`chipbench.opprofile.OpProfile`):
    quantize/dequantize nodes apart ("quantize/dequantize"), the rest by the profile's category
    (conv, matmul, pool, norm, other)."""
    out: dict[str, float] = {}
    for op in profile.ops:
        family = "quantize/dequantize" if op.op_type in QDQ_OPS else op.category
        out[family] = out.get(family, 0.0) + op.time_ms
    return out


def loss_reason(fp32_path: Path, int8_path: Path, inputs: Arrays, threads: int, runs: int = 20) -> str:
    """One line on why the int8 model is slower than fp32: the operator families whose time
    grew, from ORT's per-op profiles of both (median of `runs` runs each), with the fp32
    operators left between Q/DQ pairs (float kernels the int8 graph still runs) named."""
    from chipbench.backends.ort_profile import profile_ort

    fp = family_times(profile_ort(fp32_path, inputs, runs=runs, threads=threads))
    prof8 = profile_ort(int8_path, inputs, runs=runs, threads=threads)
    q8 = family_times(prof8)
    grew = sorted(((q8.get(f, 0.0) - fp.get(f, 0.0), f) for f in set(fp) | set(q8)), reverse=True)
    parts = [f"{f} {fp.get(f, 0.0):.3g} -> {q8.get(f, 0.0):.3g} ms" for d, f in grew if d > 0]
    float_ops = sorted({op.op_type for op in prof8.ops
                        if op.op_type not in QDQ_OPS and not op.op_type.startswith(("QLinear", "QGemm"))
                        and op.category in ("conv", "matmul")})
    text = "slower in int8 (per-op sum fp32 -> int8): " + ("; ".join(parts) if parts else "no family")
    if float_ops:
        text += f"; compute still in float: {', '.join(float_ops)}"
    return text
