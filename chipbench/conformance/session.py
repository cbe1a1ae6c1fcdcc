"""A conformance run: every chosen case on every chosen backend, one worker per backend, the
backends side by side (one thread each drives its worker; the work is in the workers)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from chipbench.conformance.cases import Case
from chipbench.conformance.pool import Worker


def run_cases(cases: list[Case], backends: list[str], timeout_s: float,
              progress: Callable[[dict], None] | None = None) -> tuple[list[dict], dict[str, dict]]:
    """Results (one per case and backend, in case order per backend) and, per backend, what its
    workers were: library versions, worker starts, total wall seconds and seconds per case.
    `timeout_s` bounds each case (compile, run and bisection) on each backend."""
    results: dict[str, list[dict]] = {b: [] for b in backends}
    info: dict[str, dict] = {}
    lock = threading.Lock()

    def drive(backend: str) -> None:
        worker = Worker(backend)
        start = time.perf_counter()
        try:
            for case in cases:
                result = worker.run(case, timeout_s)
                results[backend].append(result)
                if progress is not None:
                    with lock:
                        progress(result)
        finally:
            worker.close()
        seconds = time.perf_counter() - start
        info[backend] = {"versions": worker.versions, "worker_starts": worker.starts, "seconds": round(seconds, 2),
                         "per_case_s": round(seconds / len(cases), 4) if cases else None,
                         "compiles_shared": sum(1 for r in results[backend] if r.get("cached"))}

    threads = [threading.Thread(target=drive, args=(b,), name=f"conformance-{b}") for b in backends]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for b in backends for r in results[b]], info
