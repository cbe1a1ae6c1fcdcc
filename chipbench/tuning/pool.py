"""Builder and runner process pools for MetaSchedule (`python -m chipbench.tuning ms-worker KIND`)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from chipbench.tuning.tasks import build_without_gpu_intrinsics


class ProcessPool:
    """Persistent worker processes (`python -m chipbench.tuning ms-worker KIND`) that build or
    run MetaSchedule candidates, one request at a time each. A request that outlives its timeout
    gets its worker killed; a worker that crashes costs its one request; both are restarted.

    Why not MetaSchedule's LocalBuilder/LocalRunner: their PopenPool needs `cloudpickle`
    (which apache-tvm does not install), LocalBuilder restarts its pool (an `import tvm` per
    worker) for every batch, and its default build imports every target's tensor intrinsics
    (60-140 s per worker here, longer than the 30 s build timeout)."""

    def __init__(self, kind: str, size: int, timeout_s: float, startup_timeout_s: float = 900.0):
        self.kind, self.size, self.timeout_s, self.startup_timeout_s = kind, size, timeout_s, startup_timeout_s
        self.procs: list[subprocess.Popen | None] = [None] * size
        self.ready: list[bool] = [False] * size
        for i in range(size):  # start now: their `import tvm` overlaps the search for candidates
            self._spawn(i)

    def _spawn(self, i: int) -> None:
        self.procs[i] = subprocess.Popen([sys.executable, "-m", "chipbench.tuning", "ms-worker", self.kind],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None)
        self.ready[i] = False

    def _start(self, i: int) -> subprocess.Popen:
        """Worker i, started if needed and ready for a request."""
        proc = self.procs[i]
        if proc is None or proc.poll() is not None:
            self._spawn(i)
            proc = self.procs[i]
        if not self.ready[i]:
            status, value = self._recv(proc, self.startup_timeout_s)
            if status != "ready":
                self._kill(proc)
                self.procs[i] = None
                raise RuntimeError(f"{self.kind} worker did not start: {status} {value or ''}")
            self.ready[i] = True
        return proc

    @staticmethod
    def _send(proc: subprocess.Popen, request: Any) -> None:
        import pickle
        import struct

        data = pickle.dumps(request)
        proc.stdin.write(struct.pack("<Q", len(data)) + data)
        proc.stdin.flush()

    @staticmethod
    def _recv(proc: subprocess.Popen, timeout: float | None) -> tuple[str, Any]:
        import pickle
        import select
        import struct

        fd = proc.stdout
        if timeout is not None:
            ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
            if not ready:
                return "timeout", None
        head = fd.read(8)
        if len(head) < 8:
            proc.wait()
            code = proc.returncode
            how = f"killed by {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
            return "crashed", f"{how}"
        (size,) = struct.unpack("<Q", head)
        return pickle.loads(fd.read(size))

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()

    def map(self, requests: list[Any]) -> list[tuple[str, Any]]:
        """Results in order: ("ok", value) or ("error", message)."""
        import select

        results: list[tuple[str, Any] | None] = [None] * len(requests)
        pending = list(range(len(requests)))
        busy: dict[int, tuple[int, float]] = {}  # worker -> (request, deadline)
        while pending or busy:
            for i in range(self.size):
                if pending and i not in busy:
                    proc = self._start(i)
                    r = pending.pop(0)
                    try:
                        self._send(proc, requests[r])
                    except (BrokenPipeError, OSError) as exc:
                        results[r] = ("error", f"{self.kind} worker: {exc}")
                        self.procs[i] = None
                        continue
                    busy[i] = (r, time.monotonic() + self.timeout_s)
            if not busy:
                continue
            wait = max(0.0, min(d for _, d in busy.values()) - time.monotonic())
            fds = {self.procs[i].stdout: i for i in busy}
            ready, _, _ = select.select(list(fds), [], [], wait)
            for f in ready:
                i = fds[f]
                r, _ = busy.pop(i)
                status, value = self._recv(self.procs[i], None)
                if status == "crashed":
                    results[r] = ("error", f"{self.kind} worker crashed ({value})")
                    self.procs[i] = None
                else:
                    results[r] = (status, value)
            now = time.monotonic()
            for i, (r, deadline) in list(busy.items()):
                if now >= deadline:
                    busy.pop(i)
                    self._kill(self.procs[i])
                    self.procs[i] = None
                    results[r] = ("error", f"{self.kind}: timeout, killed after {self.timeout_s:g} s")
        return [r if r is not None else ("error", "lost") for r in results]

    def close(self) -> None:
        for proc in self.procs:
            if proc is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._kill(proc)
        self.procs = [None] * self.size


def make_builder_runner(builders: int, builder_timeout_s: float, runner_timeout_s: float,
                         evaluator: tuple[int, int, int, bool] = (3, 1, 100, False)) -> tuple[Any, Any]:
    """A MetaSchedule Builder and Runner backed by `ProcessPool`s."""
    import tvm
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.runner import PyRunner
    from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture

    @derived_object
    class PoolBuilder(PyBuilder):
        def __init__(self) -> None:
            super().__init__()
            self.pool = ProcessPool("build", builders, builder_timeout_s)

        def build(self, build_inputs):
            requests = [(tvm.ir.save_json(b.mod), str(b.target)) for b in build_inputs]
            out = []
            for status, value in self.pool.map(requests):
                out.append(BuilderResult(value, None) if status == "ok" else BuilderResult(None, str(value)))
            return out

    @derived_object
    class PoolRunner(PyRunner):
        def __init__(self) -> None:
            super().__init__()
            self.pool = ProcessPool("run", 1, runner_timeout_s)  # one at a time: measurements

        def run(self, runner_inputs):
            requests = [(str(r.artifact_path), str(r.device_type),
                         json.loads(json.dumps([a.as_json() for a in r.args_info])), evaluator)
                        for r in runner_inputs]
            return [LocalRunnerFuture(res=[float(c) for c in value]) if status == "ok"
                    else LocalRunnerFuture(error_message=str(value)) for status, value in self.pool.map(requests)]

    return PoolBuilder(), PoolRunner()


def serve(kind: str) -> int:
    """Serve build or run requests on stdin/stdout (see `ProcessPool`)."""
    import pickle
    import struct
    import traceback

    proto = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything else printed to stdout (LLVM, TVM) goes to stderr, not the protocol
    stdin = sys.stdin.buffer

    def reply(obj: Any) -> None:
        data = pickle.dumps(obj)
        proto.write(struct.pack("<Q", len(data)) + data)
        proto.flush()

    import tvm

    if kind == "build":
        from tvm.support.tar import tar

        def handle(req):
            mod_json, target = req
            rt_mod = build_without_gpu_intrinsics(tvm.ir.load_json(mod_json), tvm.target.Target(target), None)
            path = os.path.join(tempfile.mkdtemp(prefix="chipbench-ms-"), "tvm_tmp_mod." + tar.output_format)
            rt_mod.export_library(path, fcompile=tar)
            return path
    else:
        from tvm.s_tir.meta_schedule.runner.config import EvaluatorConfig
        from tvm.s_tir.meta_schedule.runner.local_runner import (
            default_alloc_argument, default_cleanup, default_run_evaluator)

        def handle(req):
            path, device_type, args_info, evaluator = req
            try:
                rt_mod = tvm.runtime.load_module(path)
                device = tvm.runtime.device(device_type, 0)
                args = default_alloc_argument(device, args_info, 1)
                return list(default_run_evaluator(rt_mod, device, EvaluatorConfig(*evaluator), args))
            finally:
                default_cleanup()

    reply(("ready", os.getpid()))
    while True:
        head = stdin.read(8)
        if len(head) < 8:
            return 0
        (size,) = struct.unpack("<Q", head)
        req = pickle.loads(stdin.read(size))
        try:
            reply(("ok", handle(req)))
        except Exception as exc:  # a candidate that fails to build or run: its error, not ours
            reply(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"[:4000]))
