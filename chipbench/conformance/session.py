"""A conformance run: every chosen case on every chosen backend. Each backend has `jobs` workers
(one thread each drives its worker; the work is in the workers) taking the next case from one
queue per backend, and the backends run side by side."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from chipbench.conformance.cases import Case
from chipbench.conformance.pool import Worker


def run_cases(cases: list[Case], backends: list[str], timeout_s: float,
              progress: Callable[[dict], None] | None = None, jobs: int = 1) -> tuple[list[dict], dict[str, dict]]:
    """Results (one per case and backend: per backend, in case order) and, per backend, what its
    workers were: library versions, worker starts, wall seconds from its first case to its last
    and seconds per case (wall seconds x workers / cases: the cost of one case on one worker),
    and how many cases reused a build of identical model bytes. `timeout_s` bounds each case
    (compile, run and bisection) on each backend."""
    results: dict[str, list[dict | None]] = {b: [None] * len(cases) for b in backends}
    info: dict[str, dict] = {}
    lock = threading.Lock()

    def drive(backend: str, todo: queue.Queue, workers: list[Worker]) -> None:
        worker = Worker(backend)
        with lock:
            workers.append(worker)
        try:
            while True:
                try:
                    index = todo.get_nowait()
                except queue.Empty:
                    return
                result = worker.run(cases[index], timeout_s)
                results[backend][index] = result
                if progress is not None:
                    with lock:
                        progress(result)
        finally:
            worker.close()

    def run_backend(backend: str) -> None:
        todo: queue.Queue = queue.Queue()
        for i in range(len(cases)):
            todo.put(i)
        workers: list[Worker] = []
        start = time.perf_counter()
        n = max(1, min(jobs, len(cases)))
        threads = [threading.Thread(target=drive, args=(backend, todo, workers)) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - start
        done = [r for r in results[backend] if r is not None]
        versions = next((w.versions for w in workers if w.versions), {})
        info[backend] = {"versions": versions, "worker_starts": sum(w.starts for w in workers),
                         "workers": n, "seconds": round(seconds, 2),
                         "per_case_s": round(seconds * n / len(cases), 4) if cases else None,
                         "compiles_shared": sum(1 for r in done if r.get("cached"))}

    threads = [threading.Thread(target=run_backend, args=(b,), name=f"conformance-{b}") for b in backends]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for b in backends for r in results[b] if r is not None], info
