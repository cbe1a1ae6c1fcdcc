"""Load and run an ONNX Runtime bundle (the device's half of `ort.py`'s export).

The bundle holds the ONNX file at the cell's precision (fp32, fp16-converted or QDQ int8),
with any external data beside it; this module needs only `onnxruntime` and numpy, and opens
the session with the options `ort.py` used on the compiling host (threads, optimisation
level, providers).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from chipbench.bundle_format import Arrays, Loaded


def versions() -> dict[str, str]:
    """onnxruntime's version in this process."""
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__}


def session_options(threads: int, optimization: str = "ORT_ENABLE_ALL") -> Any:
    """The SessionOptions every ONNX Runtime session here uses (the backend's, its profiler's and
    a bundle's): `threads` intra-op threads, one inter-op thread (a model runs its nodes in
    order), and the graph optimisation level by name."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, optimization)
    return opts


def load(folder: Path, entries: dict[str, Any], input_names: list[str], output_names: list[str],
         device_index: int = 0) -> Loaded:
    """An InferenceSession on the bundle's model with its recorded options. `threads` 0 or
    absent means every usable core of this machine (as `ort.py` does when none is set)."""
    import onnxruntime as ort

    from chipbench.machine import usable_cores

    start = time.perf_counter()
    opts = session_options(int(entries.get("threads") or usable_cores()), entries.get("optimization", "ORT_ENABLE_ALL"))
    providers = list(entries.get("providers") or ["CPUExecutionProvider"])
    session = ort.InferenceSession(str(Path(folder) / entries["model"]), opts, providers=providers)
    load_s = time.perf_counter() - start
    names = [o.name for o in session.get_outputs()]

    def run(inputs: Arrays) -> Arrays:
        return dict(zip(names, session.run(names, inputs)))

    return Loaded(run=run, timer=None, load_s=load_s,
                  device={"threads": opts.intra_op_num_threads, "providers": session.get_providers()},
                  versions=versions())
