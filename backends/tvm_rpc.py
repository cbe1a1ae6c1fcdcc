"""A board behind a TVM RPC tracker: the host compiles, the board loads and times (`tvm.rpc`).

One cell holds one session from the tracker for its whole life (compile, upload, measure),
so a fleet of N servers under a key measures N cells at once and a server that dies costs
only the cell it was serving (its next RPC call raises, the cell fails with that line).

Timing is `time_evaluator` on the board (`invoke_stateful` of the VM's `main`, one query per
repeat), so the network stays outside every sample. Outputs for fidelity are fetched once.
The session request waits at most `CHIPBENCH_RPC_WAIT_S` seconds (default 120) for a free
server under the key, then fails with the tracker's queue state as the reason.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chipbench.backends.base import Arrays, Compiled, Unsupported
from chipbench.backends.tvm_runtime import InputBuffers, to_numpy
from chipbench.device import Device
from chipbench.errors import first_line
from chipbench.rpc_server import DEVICE_INFO  # registered by `chipbench rpc serve`

WAIT_ENV = "CHIPBENCH_RPC_WAIT_S"
DEFAULT_WAIT_S = 120.0


class RpcError(RuntimeError):
    """The tracker or a server could not be reached or gave no session (one-line reason)."""


def wait_seconds() -> float:
    """How long a cell waits for a free server: $CHIPBENCH_RPC_WAIT_S, else DEFAULT_WAIT_S."""
    try:
        return float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_S))
    except ValueError:
        raise RpcError(f"{WAIT_ENV}={os.environ[WAIT_ENV]!r} is not a number of seconds") from None


def check_tracker(host: str, port: int, timeout_s: float = 5.0) -> None:
    """RpcError unless something accepts TCP connections at host:port (TVM's own client retries
    a refused tracker for 60 s; this answers at once)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise RpcError(f"no TVM RPC tracker at {host}:{port} ({exc.strerror or exc})") from None


def tracker_summary(host: str, port: int) -> dict[str, Any]:
    """The tracker's summary: {"queue_info": {key: {"free", "pending"}}, "server_info": [...]}."""
    from tvm import rpc

    check_tracker(host, port)
    tracker = rpc.connect_tracker(host, port)
    try:
        return tracker.summary()
    finally:
        tracker.close()


def servers_under(summary: dict[str, Any], key: str) -> int:
    """Servers registered under `key` in a tracker summary, busy or free."""
    return sum(1 for s in summary.get("server_info", []) if s.get("key") == f"server:{key}")


class RemoteSession:
    """One session with a server under `device.key`, requested from the tracker at
    device.host:device.port. RpcError when none frees up within `wait_s` seconds."""

    def __init__(self, device: Device, wait_s: float | None = None) -> None:
        from tvm import rpc
        from tvm.rpc import base

        self.device = device
        self.server = "?"
        wait = wait_seconds() if wait_s is None else wait_s
        check_tracker(device.host, device.port)
        tracker = rpc.connect_tracker(device.host, device.port)
        start = time.perf_counter()
        # TrackerSession.request's own exchange, with a deadline (it blocks until a server is
        # free) and keeping the server's address, which the record and any failure name
        try:
            tracker._sock.settimeout(wait)
            base.sendjson(tracker._sock, [base.TrackerCode.REQUEST, device.key, "", 1])
            value = base.recvjson(tracker._sock)
        except OSError as exc:
            raise RpcError(self._why_not(wait, exc)) from None
        finally:
            tracker.close()
        if value[0] != base.TrackerCode.SUCCESS:
            raise RpcError(self._why_not(wait, RuntimeError(f"tracker answered {value!r}")))
        url, port, matchkey = value[1]
        self.server = f"{url}:{port}"
        self.wait_s = time.perf_counter() - start
        self.info: dict[str, Any] = {}
        with self.guard("opening the session"):
            self.session = rpc.connect(url, port, matchkey, session_timeout=0)
        self.info = self._remote_info()

    def _why_not(self, wait: float, exc: Exception) -> str:
        d = self.device
        try:
            summary = tracker_summary(d.host, d.port)
            n = servers_under(summary, d.key)
            queue = summary.get("queue_info", {}).get(d.key, {})
            state = f"{n} server(s) registered, {queue.get('free', 0)} free, {queue.get('pending', 0)} request(s) pending"
        except Exception:
            state = "tracker state unknown"
        if isinstance(exc, TimeoutError) or "timed out" in str(exc):
            return f"no server under key '{d.key}' at tracker {d.host}:{d.port} became free within {wait:g} s ({state})"
        return f"tracker {d.host}:{d.port} gave no session for key '{d.key}': {first_line(exc, 200)} ({state})"

    def _remote_info(self) -> dict[str, Any]:
        """What the server reports through chipbench.device_info ({} from a plain TVM server)."""
        try:
            func = self.session.get_function(DEVICE_INFO)
        except Exception:
            return {}
        with self.guard("reporting what it is"):
            return json.loads(func())

    @contextmanager
    def guard(self, doing: str):
        """Turn a failure of the session (server died, network gone) into one RpcError line
        naming the server, the key and what it was doing."""
        try:
            yield
        except (RpcError, Unsupported):
            raise
        except Exception as exc:
            first = first_line(exc, 200)
            raise RpcError(f"RPC server {self.server} under key '{self.device.key}' failed while {doing} "
                           f"(server gone?): {type(exc).__name__}: {first}") from None

    def target(self, threads: int | None = None) -> Any:
        """The LLVM target the server reports for itself, with its core count; Unsupported when
        it reports none (a server not started by `chipbench rpc serve`, or without LLVM)."""
        import tvm

        llvm = self.info.get("llvm")
        if not llvm:
            raise Unsupported(f"the server under key '{self.device.key}' reports no LLVM target "
                              f"(not `chipbench rpc serve`, or runtime-only): give --target")
        cores = threads or self.info.get("cores") or 1
        return tvm.target.Target({"kind": "llvm", "mtriple": llvm["triple"], "mcpu": llvm["mcpu"],
                                  "num-cores": int(cores)})

    def describe(self) -> dict[str, Any]:
        """The remote as a record's device: what it reports, plus where it was reached."""
        info = {k: v for k, v in self.info.items() if k != "llvm"}
        llvm = self.info.get("llvm") or {}
        described = {
            "name": str(info.pop("cpu_model", "") or "unknown (server reports nothing)"),
            **info,
            "llvm_triple": llvm.get("triple"),
            "llvm_mcpu": llvm.get("mcpu"),
            "server": self.server,
            "tracker": f"{self.device.host}:{self.device.port}",
            "key": self.device.key,
        }
        return described

    def compiled(self, exe: Any, weights: list[Any], input_names: tuple[str, ...],
                 output_names: tuple[str, ...], **fields: Any) -> Compiled:
        """Upload `exe` and `weights`, load them in a Relax VM on the server's CPU and return a
        Compiled whose `run` fetches outputs and whose `timer` is the server's time_evaluator.
        `fields` go to Compiled (compile_s, target, pipeline, details); the artifact's bytes are
        the uploaded library's and the weights'."""
        import tvm
        from tvm.runtime.vm import VirtualMachine

        from chipbench.backends.tvm import weight_bytes

        sess = self.session
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="chipbench-rpc-") as tmp:
            lib_path = Path(tmp) / "model.so"
            exe.export_library(str(lib_path))
            lib_bytes = lib_path.stat().st_size
            with self.guard("receiving the library"):
                sess.upload(str(lib_path), "model.so")
        upload_s = time.perf_counter() - start
        start = time.perf_counter()
        with self.guard("loading the library and weights"):
            lib = sess.load_module("model.so")
            dev = sess.cpu(0)
            vm = VirtualMachine(lib, dev)
            params = [tvm.runtime.tensor(w.numpy(), dev) for w in weights]
            if _implements(vm, "main_transform_params"):
                vm.set_input("main_transform_params", params)
                vm.invoke_stateful("main_transform_params")
                params = list(vm.get_outputs("main_transform_params"))
        load_s = time.perf_counter() - start
        buffers = InputBuffers(input_names, dev)

        def upload(inputs: Arrays) -> None:
            vm.set_input("main", *buffers(inputs), *params)

        def run(inputs: Arrays) -> Arrays:
            with self.guard("running the model"):
                upload(inputs)
                vm.invoke_stateful("main")
                return dict(zip(output_names, to_numpy(vm.get_outputs("main"))))

        def timer(inputs: Arrays, n: int) -> list[float]:
            with self.guard("timing the model"):
                upload(inputs)
                result = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=n)("main")
                return [float(t) for t in result.results]

        def close() -> None:
            buffers.tensors.clear()
            params.clear()
            self.session = None  # the session ends when this Compiled (whose run and timer hold it) goes

        param_bytes = weight_bytes(weights)
        details = {**fields.pop("details", {}), "rpc_wait_s": self.wait_s, "export_upload_s": upload_s,
                   "remote_load_s": load_s, "library_bytes": lib_bytes, "param_bytes": param_bytes}
        fields["artifact_bytes"] = lib_bytes + param_bytes
        return Compiled(run=run, timer=timer, timer_untimed_calls=1, close=close, device=self.describe(), details=details,
                        **fields)  # time_evaluator runs `main` once before it times


def _implements(vm: Any, name: str) -> bool:
    """Whether the (remote) VM has function `name`: an RPC module answers a lookup, not a query."""
    try:
        vm.module.get_function(name, query_imports=True)
    except Exception:
        return False
    return True
