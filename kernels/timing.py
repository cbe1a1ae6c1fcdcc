"""Side-by-side timing of several implementations of one kernel on a shared, busy machine."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any


def best_seconds(fns: dict[str, Callable[[], Any]], rounds: int = 8, per_block: int = 3,
                 pause_s: float = 0.05, clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Best seconds per call of each function, timed in alternating blocks so that load from
    other processes hits every implementation alike. The pause between blocks lets one
    runtime's spinning worker threads (ONNX Runtime, OpenBLAS, TVM all spin after a call) go
    idle before the next runtime needs the cores. With everything on one thread,
    `clock=time.thread_time` counts only the CPU time this thread got: per-core speed that
    other processes cannot distort."""
    best = dict.fromkeys(fns, float("inf"))
    for fn in fns.values():
        fn()  # warm-up: thread pools, page faults, lazy packing
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(pause_s)
            for _ in range(per_block):
                start = clock()
                fn()
                best[name] = min(best[name], clock() - start)
    return best


def single_thread_env() -> bool:
    """True when TVM and OpenBLAS were told (before import) to run on the calling thread."""
    return os.environ.get("TVM_NUM_THREADS") == "1" and os.environ.get("OPENBLAS_NUM_THREADS") == "1"


SINGLE_THREAD_HINT = "set TVM_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 in the environment for --per-core"
