"""Raw per-query latencies kept with the record, so statistics and comparisons can be recomputed.

The encoding `f32-zlib-b64`: the latencies in seconds as little-endian float32 (a relative
rounding of 6e-8, 60 ps at 1 ms: far below any clock this harness reads), in the order the
queries ran, zlib-compressed (level 6) and base64-encoded, so the record stays plain JSON.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ENCODING = "f32-zlib-b64"


class SamplesError(ValueError):
    """Stored samples that cannot be decoded: an unknown encoding, a damaged payload or a count
    that does not match; the message says which."""


def encode(samples_s: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """`{"encoding": "f32-zlib-b64", "unit": "s", "count": n, "data": str}` of per-query
    latencies in seconds (order kept). ValueError for an empty, non-1-D or non-finite series."""
    x = np.asarray(samples_s, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"latency samples must be a non-empty 1-D series, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("latency samples must be finite")
    raw = x.astype("<f4").tobytes()
    return {"encoding": ENCODING, "unit": "s", "count": int(x.size),
            "data": base64.b64encode(zlib.compress(raw, 6)).decode("ascii")}


def decode(stored: Mapping[str, Any]) -> np.ndarray:
    """The per-query latencies (seconds, float64, in run order) of `encode`'s form.
    SamplesError when the encoding, unit, payload or count is not what it says."""
    if stored.get("encoding") != ENCODING:
        raise SamplesError(f"unknown latency sample encoding {stored.get('encoding')!r}")
    if stored.get("unit") != "s":
        raise SamplesError(f"latency samples in unit {stored.get('unit')!r}, expected 's'")
    data = stored.get("data")
    if not isinstance(data, str):
        raise SamplesError("latency samples have no data (an index row keeps only their count)")
    try:
        raw = zlib.decompress(base64.b64decode(data.encode("ascii"), validate=True))
    except (binascii.Error, zlib.error, UnicodeEncodeError) as exc:
        raise SamplesError(f"latency samples are damaged ({exc})") from None
    if len(raw) % 4:
        raise SamplesError("latency samples are damaged (not whole float32 values)")
    x = np.frombuffer(raw, dtype="<f4").astype(np.float64)
    if x.size != stored.get("count"):
        raise SamplesError(f"latency samples hold {x.size} values, the record says {stored.get('count')}")
    return x
