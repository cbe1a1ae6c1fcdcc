"""Spread a suite over a fleet: cells sent to an RPC key run as many at once as the key has servers.

The tracker queues session requests and hands each free server to the next one, so a suite
only has to keep N cells in flight for a key with N servers (each cell subprocess holds one
session for its whole life; see chipbench.backends.tvm_rpc). Cells on local devices keep
running one at a time, in order, so that they never time each other.

The server count comes from the tracker's summary, asked in a short subprocess that imports
TVM's runtime only (`python -m chipbench.fleet HOST PORT`), so the sweep's own process never
loads TVM. An unreachable tracker counts as one server: each cell then fails on its own with
the tracker's reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from itertools import groupby
from typing import TypeVar

from chipbench.device import Device, DeviceError

C = TypeVar("C")  # a cell
R = TypeVar("R")  # its record


class FleetError(RuntimeError):
    """The tracker could not be asked (one line)."""


def fleet_key(cell) -> tuple[str, int, str] | None:
    """(tracker host, port, key) of a cell sent to an RPC device; None for local devices."""
    if not getattr(cell, "device", None):
        return None
    try:
        device = Device.parse(cell.device)
    except DeviceError:
        return None
    return (device.host, device.port, device.key) if device.kind == "rpc" else None


def tracker_summary(host: str, port: int, timeout_s: float = 60.0) -> dict:
    """The summary of the tracker at host:port, asked from a runtime-only subprocess.
    FleetError with the reason when it cannot be had."""
    import tempfile

    from chipbench.runner import cell_environment

    try:  # started as a cell is: nothing in the user's folder can be imported
        with tempfile.TemporaryDirectory(prefix="chipbench-fleet-") as tmp:
            proc = subprocess.run([sys.executable, "-P", "-m", "chipbench.fleet", host, str(port)], capture_output=True,
                                  text=True, timeout=timeout_s, stdin=subprocess.DEVNULL, cwd=tmp,
                                  env=cell_environment())
    except subprocess.TimeoutExpired:
        raise FleetError(f"tracker {host}:{port} did not answer within {timeout_s:g} s") from None
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise FleetError(lines[-1] if lines else f"exit code {proc.returncode}")
    return json.loads(proc.stdout)


def servers(host: str, port: int, key: str) -> int:
    """Servers registered under `key` at the tracker host:port (busy or free); FleetError."""
    from chipbench.backends.tvm_rpc import servers_under  # light: no TVM import at module level

    return servers_under(tracker_summary(host, port), key)


def width(key: tuple[str, int, str] | None) -> int:
    """How many cells of a group run at once: 1 locally, the key's server count over RPC."""
    if key is None:
        return 1
    try:
        return max(1, servers(*key))
    except FleetError:
        return 1


def spread(cells: list[C], run_one: Callable[[C], R], width_of: Callable[[tuple | None], int] = width,
           key: Callable[[C], tuple | None] = fleet_key) -> Iterator[tuple[C, R]]:
    """Run `run_one` on every cell, yielding (cell, record) as each finishes. Consecutive cells
    with the same RPC key (`key(cell)`, fleet_key by default) form a group run
    `width_of(key)` at a time (threads, each waiting on a cell subprocess); everything else
    runs one at a time in order. The caller consumes the records in its own thread (storing,
    printing)."""
    for group_key, group in groupby(cells, key=key):
        members = list(group)
        n = min(width_of(group_key), len(members))
        if n <= 1:
            for cell in members:
                yield cell, run_one(cell)
            continue
        pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="chipbench-fleet")
        try:
            pending: dict[Future, C] = {}
            queue = iter(members)
            for cell in queue:
                pending[pool.submit(run_one, cell)] = cell
                if len(pending) == n:
                    break
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    cell = pending.pop(future)
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending[pool.submit(run_one, nxt)] = nxt
                    yield cell, future.result()
        finally:  # on an interrupt the runner kills the cells; do not wait for them here
            pool.shutdown(wait=False, cancel_futures=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m chipbench.fleet HOST PORT`: print the tracker's summary as JSON (runtime-only TVM)."""
    from chipbench.runtime_guard import enforce

    enforce()
    host, port = (argv or sys.argv[1:])[:2]
    from chipbench.backends.tvm_rpc import RpcError, tracker_summary as ask

    try:
        print(json.dumps(ask(host, int(port))))
    except (RpcError, OSError, RuntimeError) as exc:
        from chipbench.errors import first_line

        print(f"tracker {host}:{port}: {first_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
