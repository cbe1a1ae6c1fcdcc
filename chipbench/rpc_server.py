"""Start TVM's own RPC tracker and server (`tvm.rpc`), as `chipbench rpc tracker|serve` runs them.

These are TVM 0.27's implementations, run in this process: `PopenTrackerServerState` and
`PopenRPCServerState` are what `tvm.rpc.tracker.Tracker` and `tvm.rpc.Server` (and
`python -m tvm.exec.rpc_tracker|rpc_server`) start inside a helper process; running them
here saves that second interpreter and lets the server carry `chipbench.device_info`. Each
client session is served in a forked child (TVM's `_serving`), which inherits that function.

Neither needs torch or ONNX (refused, see chipbench.runtime_guard); the tracker and a
`runtime_only` server need TVM's runtime library only, as a board has. A full server also
loads TVM's LLVM so that it can report the LLVM triple and CPU the host should compile for.

SECURITY: a TVM RPC server runs whatever code it is sent (it uploads and loads shared
libraries and writes files). Bind it to loopback or a trusted, isolated network only.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import threading
from typing import Any

DEVICE_INFO = "chipbench.device_info"  # the global function a server started here answers



def device_info() -> dict[str, Any]:
    """What this machine reports to an RPC client: the machine (CPU model, arch, cores, ISA
    flags, memory, OS), TVM's version and runtime thread count, and where TVM's LLVM is loaded
    the LLVM triple and CPU name it would compile for here (`llvm_get_system_triple/cpu`)."""
    import tvm

    from chipbench.recording import this_machine

    info: dict[str, Any] = dict(this_machine())
    info["tvm"] = tvm.__version__
    info["tvm_num_threads"] = os.environ.get("TVM_NUM_THREADS")
    info["runtime_only"] = bool(getattr(tvm, "_RUNTIME_ONLY", False))
    if not info["runtime_only"]:
        try:
            from tvm.target import codegen

            info["llvm"] = {"triple": str(codegen.llvm_get_system_triple()),
                            "mcpu": str(codegen.llvm_get_system_cpu())}
        except Exception:  # a TVM built without LLVM: the host must be told the target
            pass
    return info


def register_device_info() -> None:
    """Make `chipbench.device_info` (returning device_info() as JSON text) callable over RPC."""
    import tvm_ffi

    @tvm_ffi.register_global_func(DEVICE_INFO, override=True)
    def _device_info() -> str:
        return json.dumps(device_info(), default=str)


def _prepare(runtime_only: bool, threads: int | None) -> None:
    from chipbench.machine import usable_cores
    from chipbench.runtime_guard import enforce

    enforce(runtime_only=runtime_only)
    # TVM's CPU pool starts half the CPUs on x86; a board should time on every core it has
    os.environ.setdefault("TVM_NUM_THREADS", str(threads or usable_cores()))


def _until_signalled(thread: threading.Thread) -> None:
    """Wait for a serving thread; SIGINT/SIGTERM end the process and the sessions it forked."""
    def stop(signum, _frame):
        for child in multiprocessing.active_children():
            child.kill()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while thread.is_alive():
        thread.join(timeout=1.0)


def run_tracker(host: str, port: int, port_end: int, announce) -> None:
    """TVM's RPC tracker on host:port (the first free port below port_end); calls
    announce(host, port) once listening, then serves until signalled."""
    _prepare(runtime_only=True, threads=None)
    from tvm.rpc.tracker import PopenTrackerServerState

    state = PopenTrackerServerState(host, port, port_end, silent=True)
    announce(host, state.port)
    _until_signalled(state.thread)


def run_server(host: str, port: int, port_end: int, tracker: tuple[str, int], key: str, announce,
               runtime_only: bool = False, threads: int | None = None, custom_addr: str | None = None) -> None:
    """TVM's RPC server on host:port (first free port below port_end), registered with the
    tracker under `key`; calls announce(host, port) once listening, then serves until signalled."""
    _prepare(runtime_only=runtime_only, threads=threads)
    from tvm.rpc.server import PopenRPCServerState

    if sys.platform != "win32":  # sessions fork from here, inheriting chipbench.device_info
        multiprocessing.set_start_method("fork", force=True)
    register_device_info()
    state = PopenRPCServerState(host, port, port_end, tracker_addr=tracker, key=key,
                                custom_addr=custom_addr, silent=True)
    announce(host, state.port)
    _until_signalled(state.thread)


def main(argv: list[str] | None = None) -> int:
    """`python -m chipbench.rpc_server --tracker HOST:PORT --key KEY [...]`: the server without the
    chipbench CLI (as the runtime kit's `rpc-serve` runs it on a board; runtime-only when
    TVM_USE_RUNTIME_LIB=1). Returns the exit status."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m chipbench.rpc_server",
                                description="TVM's RPC server with chipbench.device_info. SECURITY: it runs "
                                            "whatever code it is sent; bind it to loopback or a trusted network.")
    p.add_argument("--tracker", required=True, help="HOST:PORT of the tracker")
    p.add_argument("--key", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9090)
    p.add_argument("--port-end", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--custom-addr")
    p.add_argument("--runtime-only", action="store_true")
    args = p.parse_args(argv)
    host, _, port = args.tracker.rpartition(":")
    if not host or not port.isdigit():
        p.error(f"--tracker '{args.tracker}': expected HOST:PORT")

    def announce(h: str, pt: int) -> None:
        print(f"chipbench rpc serve ({args.key}): listening on {h}:{pt}", file=sys.stderr, flush=True)

    runtime_only = args.runtime_only or os.environ.get("TVM_USE_RUNTIME_LIB") == "1"
    run_server(args.host, args.port, args.port_end or args.port + 100, (host, int(port)), args.key, announce,
               runtime_only=runtime_only, threads=args.threads, custom_addr=args.custom_addr)
    print(f"server under key '{args.key}' stopped (tracker {args.tracker} gone?)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
