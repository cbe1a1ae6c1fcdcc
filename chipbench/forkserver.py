"""A cell fork server: import the harness and the runtimes once, then fork each cell from it.

A fresh `python -P -m chipbench.cell` spends seconds importing torch, TVM, ONNX Runtime and
the harness before it measures anything (on 2 cores: `import tvm` 3.4 s, `import torch` 1.7 s).
The runner (chipbench.runner.run_cells) starts this server once per round of a sweep as
`python -P -m chipbench.forkserver` (cwd: a private temporary folder, env: exactly the cells'
env, its own session) and sends it one JSON line per cell:

    {"id": K, "cell": CELL.json, "out": OUT.json, "err": ERRFILE, "cwd": DIR}

The server forks; the child starts a session of its own, changes to DIR, reads stdin from
/dev/null, writes stdout and stderr to ERRFILE and runs `chipbench.cell.main([CELL, OUT])`
exactly as the exec'd interpreter would, then exits with its return code (an exception: the
traceback goes to ERRFILE, exit code 1). The server answers `{"id": K, "pid": N}` at once and
`{"pid": N, "returncode": R}` when that child ends (R < 0: killed by signal -R, as Popen says).
Requests are served concurrently (RPC cells run several at once). At start it says
`{"ready": true, "pid": N, "preloaded": [module names]}`.

What is preloaded (`PRELOAD`, each only where it imports; a failure is ignored): the harness
(chipbench.cell and what it imports), numpy, onnx, onnxruntime, mlperf_loadgen, torch, tvm
(tvm.relax, tvm.runtime), openvino and scipy.stats. Importing them creates no model, session, device,
thread pool or CUDA context; the settings the backends make before using these libraries are
read later than import, so a child that makes them gets its own values:

- TVM_NUM_THREADS (backends/tvm.py, tvm_runtime.py, set with setdefault before the first
  parallel call): TVM's CPU thread pool (`ThreadPool`, src/runtime/thread_pool.cc) is made on
  the first parallel launch and reads the variable then, not at `import tvm`; a child that sets
  it after the import gets that many threads (tests/test_forkserver.py checks it through
  `runtime.NumThreads`). TVM_CUDA_COMPILE_MODE and PATH (backends/tvm_cuda.py) are read by
  tvm.contrib.nvcc at each compile.
- `--pin` (chipbench.resources.apply_pin, before any backend compiles): ONNX Runtime's and
  OpenVINO's pools are made with the session or compiled model and TVM's on first use, after
  the child pinned itself, and they size themselves as in a fresh pinned interpreter
  (tests/test_forkserver.py compares them). numpy (OpenBLAS) is imported before the pin under
  exec too, so its thread count is the same either way; OpenBLAS's atfork handler stops its
  workers before fork and the child starts its own on its first BLAS call. torch is the
  exception: its default intra-op thread count is fixed from the CPUs the process may use when
  torch loads (2 in a forked child pinned to 1 CPU, 1 in a fresh one), and tvm imports torch
  (through tvm_ffi). The torch backends set the count themselves, but a pinned cell's
  preparation would not, so the runner execs every cell that has a pin (cell.pin) rather than
  preload neither torch nor TVM for all the others.
- No library here reads OMP_NUM_THREADS or a CUDA stub path from chipbench at import: no code
  in chipbench or backends/ sets them (grep `os.environ`); the runner's env is the server's.

What stays isolated: every cell is still a process of its own with its own session (its group
is killed on timeout and after it ends), its own working folder, stdin, stderr file and
address space (copy-on-write: nothing a cell loads or changes reaches the server or the next
cell); `-P` keeps the user's folder off `sys.path` in the server and so in each child. Python's
`random` reseeds itself in a forked child; numpy's global generator is reseeded here from the
OS, as a fresh interpreter's is. A new server per round gives each invocation of `--repeat`
its own server, hence a fresh address-space layout.

The server dies with the runner: on stdin EOF (the runner's end closes when it exits, however
it dies) it kills its live children's groups and exits, and a shell watchdog in its group kills
it when the runner's pid is gone (chipbench.cell.die_with_parent, without PR_SET_PDEATHSIG,
which follows the runner's *thread* and the runner may start a server from a worker thread). Each child names the server in CHIPBENCH_PARENT_PID, so it dies with the server.
"""

from __future__ import annotations

import importlib
import json
import os
import selectors
import signal
import sys
import traceback

PARENT_ENV = "CHIPBENCH_PARENT_PID"  # as chipbench.runner.PARENT_ENV
PRELOAD = ("chipbench.cell", "numpy", "onnx", "onnxruntime", "mlperf_loadgen",
           "torch", "tvm", "tvm.relax", "tvm.runtime", "openvino",
           "scipy.stats")  # the task metrics' ranks (workloads.metrics.auroc): 2 s a cell otherwise


def preload(names: tuple[str, ...] = PRELOAD) -> list[str]:
    """Import each module of `names` that imports here; the names that did, in order. Any
    failure (missing, broken install, a library refusing this machine) is ignored."""
    loaded = []
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - a library that cannot load is simply not preloaded
            continue
        loaded.append(name)
    return loaded


def _child(request: dict, server_pid: int, close_fds: list[int]) -> None:
    """In the forked child: become the cell. Never returns."""
    rc = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in close_fds:
            os.close(fd)
        os.setsid()
        os.chdir(request["cwd"])
        null = os.open(os.devnull, os.O_RDONLY)
        err = os.open(request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(null, 0)
        os.dup2(err, 1)
        os.dup2(err, 2)
        os.close(null)
        os.close(err)
        os.environ[PARENT_ENV] = str(server_pid)  # the cell dies with the server, the server with the runner
        import numpy as np

        np.random.seed()  # a fresh interpreter's global generator is seeded from the OS too
        import chipbench.cell
        from chipbench.cell import main

        sys.argv = [chipbench.cell.__file__, request["cell"], request["out"]]  # as `python -m chipbench.cell` has it
        rc = main([request["cell"], request["out"]])
        rc = rc if isinstance(rc, int) else 0
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - whatever the cell raised: its traceback, exit 1
        traceback.print_exc()
        rc = 1
    try:
        import atexit

        atexit._run_exitfuncs()  # what a normal interpreter exit runs
    except BaseException:  # noqa: BLE001
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            pass
    os._exit(rc)


class _Server:
    def __init__(self, preloaded: list[str], answers: int) -> None:
        self.preloaded, self.answers = preloaded, answers
        self.children: set[int] = set()
        self.buffer = b""
        self.eof = False
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup fd is written
        signal.set_wakeup_fd(self.wake_w)
        self.selector = selectors.DefaultSelector()
        self.selector.register(0, selectors.EVENT_READ)
        self.selector.register(self.wake_r, selectors.EVENT_READ)

    def say(self, message: dict) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(self.answers, data):]

    def serve(self) -> int:
        self.say({"ready": True, "pid": os.getpid(), "preloaded": self.preloaded})
        while not self.eof:
            for key, _ in self.selector.select(timeout=1.0):
                if key.fd == self.wake_r:
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                else:
                    self.read_requests()
            self.reap()
        self.stop_children()
        return 0

    def read_requests(self) -> None:
        chunk = os.read(0, 65536)
        if not chunk:
            self.eof = True
            return
        self.buffer += chunk
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line.strip():
                self.start(line)

    def start(self, line: bytes) -> None:
        request: dict = {}
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            for field in ("cell", "out", "err", "cwd"):
                if not isinstance(request.get(field), str):
                    raise ValueError(f"request has no '{field}'")
        except ValueError as exc:
            self.say({"id": request.get("id") if isinstance(request, dict) else None, "error": str(exc)})
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self.selector.close()
            _child(request, os.getppid(), [self.wake_r, self.wake_w, self.answers])
        self.children.add(pid)
        self.say({"id": request.get("id"), "pid": pid})

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid not in self.children:  # the watchdog shell, or a child of a library
                continue
            self.children.discard(pid)
            try:  # what the cell left in its group (its watchdog) goes with it, as under exec
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.say({"pid": pid, "returncode": os.waitstatus_to_exitcode(status)})

    def stop_children(self) -> None:
        for pid in list(self.children):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in list(self.children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.children.clear()


def main() -> int:
    """Entry point: `python -P -m chipbench.forkserver` (requests on stdin, answers on stdout)."""
    answers = os.dup(1)  # the runner's pipe carries answers only: what libraries print goes to stderr
    os.dup2(2, 1)
    from chipbench.cell import die_with_parent  # the first module preload() imports anyway

    die_with_parent(pdeathsig=False)  # PR_SET_PDEATHSIG would follow the runner's thread, not the runner
    preloaded = preload()
    try:
        return _Server(preloaded, answers).serve()
    except BrokenPipeError:  # the runner is gone
        return 0


if __name__ == "__main__":
    sys.exit(main())
