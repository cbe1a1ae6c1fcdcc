"""Remote boards over TVM RPC, on loopback: a tracker and servers in subprocesses (`chipbench rpc
tracker|serve`, TVM's own), cells sent to `rpc://127.0.0.1:PORT/KEY` by `chipbench run`.

No `rpc` marker: these start their own tracker, so they run wherever the tests run.
"""

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from chipbench.record import validate

FAST = ["--min-duration", "0.2", "--min-count", "5", "--task-samples", "0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Started:
    """A `chipbench rpc ...` subprocess in its own process group; `ready()` waits until it says
    where it listens (so several can start side by side)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "chipbench.cli", "rpc", *args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.address = ""

    def ready(self, timeout_s: float = 180.0) -> "Started":
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        seen = []
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            line = self.proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            if "listening on " in line:
                self.address = line.rsplit("listening on ", 1)[1].strip()
                return self
        self.kill()
        raise RuntimeError(f"`chipbench rpc` did not start: {''.join(seen)[-2000:]}")

    def sessions(self) -> int:
        """Sessions this server is serving now (TVM forks one child per session)."""
        try:
            return len(psutil.Process(self.proc.pid).children())
        except psutil.NoSuchProcess:
            return 0

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server and the sessions it forked
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def tracker():
    port = free_port()
    started = Started("tracker", "--port", str(port), "--port-end", str(port + 1)).ready()
    yield started
    started.kill()


def serve(tracker: Started, key: str, n: int) -> list[Started]:
    """n servers under `key` on free ports, started side by side; the caller kills them."""
    servers = []
    try:
        for _ in range(n):
            port = free_port()
            servers.append(Started("serve", "--tracker", tracker.address, "--key", key, "--port", str(port),
                                   "--port-end", str(port + 1)))
        return [s.ready() for s in servers]
    except Exception:
        for s in servers:
            s.kill()
        raise


@pytest.fixture(scope="module")
def loop(tracker):
    servers = serve(tracker, "loop", 2)
    yield tracker, servers
    for s in servers:
        s.kill()


def cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "chipbench.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def records(results: Path) -> list[dict]:
    out = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    for r in out:
        validate(r)
    return out


def test_the_tracker_counts_both_servers_under_the_key(loop):
    from chipbench.fleet import servers

    tracker, _ = loop
    host, port = tracker.address.rsplit(":", 1)
    assert servers(host, int(port), "loop") == 2
    assert servers(host, int(port), "nobody") == 0
    proc = cli("rpc", "status", "--tracker", tracker.address)
    assert proc.returncode == 0 and proc.stdout.startswith("loop\t2 server(s)")


def test_a_cell_over_rpc_is_valid_and_its_record_names_the_remote(loop, tmp_path):
    tracker, servers = loop
    url = f"rpc://{tracker.address}/loop"
    proc = cli("run", "-w", "tiny-mlp", "-b", "tvm-llvm", "--device", url, *FAST, "--results-dir", tmp_path,
               "--no-report")
    assert proc.returncode == 0, proc.stderr
    (rec,) = records(tmp_path)
    assert rec["status"] == "ok" and rec["verdict"] == "VALID", rec["reason"]
    device = rec["provenance"]["device"]
    assert device["kind"] == "rpc" and device["id"] == url and device["key"] == "loop"
    assert device["server"] in {s.address for s in servers}  # the tracker reports servers by their bind address
    assert device["name"] == rec["provenance"]["machine"]["cpu_model"]  # loopback: this very CPU
    assert device["cores"] >= 1 and device["llvm_mcpu"] and device["runtime_only"] is False
    target = json.loads(rec["backend"]["target"])
    assert target["mcpu"] == device["llvm_mcpu"] and target["mtriple"] == device["llvm_triple"]
    details = rec["backend"]["details"]
    assert details["remote_load_s"] > 0 and details["library_bytes"] > 0
    assert rec["latency"]["count"] >= 5


def test_a_session_request_times_out_with_the_reason_when_no_server_frees_up(tracker):
    from chipbench.backends.tvm_rpc import RemoteSession, RpcError
    from chipbench.device import Device

    with pytest.raises(RpcError) as refused:
        RemoteSession(Device.parse(f"rpc://{tracker.address}/nobody"), wait_s=1)
    reason = str(refused.value)
    assert "no server under key 'nobody'" in reason and "within 1 s" in reason
    assert "0 server(s) registered" in reason and "\n" not in reason


def test_no_tracker_is_said_at_once():
    from chipbench.backends.tvm_rpc import RemoteSession, RpcError
    from chipbench.device import Device

    port = free_port()
    with pytest.raises(RpcError, match=f"no TVM RPC tracker at 127.0.0.1:{port}"):
        RemoteSession(Device.parse(f"rpc://127.0.0.1:{port}/loop"), wait_s=1)


def test_a_server_killed_mid_sweep_costs_only_the_cell_it_served(tracker, tmp_path):
    doomed, survivor = serve(tracker, "fleet", 2)
    try:
        suite = tmp_path / "suite.toml"
        cells = "".join(f'\n[[cells]]\nworkload = "tiny-mlp"\nbackend = "tvm-llvm"\nseed = {seed}\n' for seed in (1, 2, 3))
        suite.write_text(f'[defaults]\ndevice = "rpc://{tracker.address}/fleet"\nmin_duration_s = 1.0\n'
                         f'min_count = 5\ntask_samples = 0\n{cells}')
        sweep = subprocess.Popen([sys.executable, "-m", "chipbench.cli", "run", "--suite", str(suite),
                                  "--results-dir", str(tmp_path / "res"), "--no-report"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 300
        while doomed.sessions() == 0 and sweep.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert doomed.sessions() > 0, "no cell ever reached the first server"
        doomed.kill()  # mid-cell: a session is open on it
        out, _ = sweep.communicate(timeout=600)
    finally:
        doomed.kill()
        survivor.kill()
    assert sweep.returncode == 1, out  # a failed cell, after the whole sweep ran
    recs = records(tmp_path / "res")
    assert len(recs) == 3
    failed = [r for r in recs if r["status"] == "failed"]
    valid = [r for r in recs if r["verdict"] == "VALID"]
    assert len(failed) == 1 and len(valid) == 2, [r["reason"] for r in recs]
    reason = failed[0]["reason"]
    assert "\n" not in reason and f"RPC server {doomed.address} under key 'fleet' failed while" in reason
    # the first session the doomed server ever served was killed: every valid cell ran on the other
    assert {r["provenance"]["device"]["server"] for r in valid} == {survivor.address}


def test_a_board_with_only_the_runtime_kit_serves_cells_compiled_for_a_given_target(tracker, tmp_path):
    """`kit/rpc-serve` on a Python that sees nothing but the kit and numpy (no torch, no ONNX,
    no TVM compiler, no psutil): it reports no LLVM target, so the host is told one."""
    from test_bundle import kit_and_numpy

    from chipbench.accuracy import fidelity
    from chipbench.backends.base import CompileSpec, Unsupported, get_backend
    from chipbench.backends.tvm import host_target
    from chipbench.cell import prepare
    from chipbench.device import Device
    from chipbench.suite import Cell

    kit, deps = kit_and_numpy(tmp_path)
    port = free_port()
    board = subprocess.Popen([str(kit.folder / "rpc-serve"), "--tracker", tracker.address, "--key", "kit",
                              "--port", str(port), "--port-end", str(port + 1)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True, cwd=tmp_path,
                             env={"PATH": os.environ.get("PATH", ""), "PYTHON": f"{sys.executable} -S",
                                  "PYTHONPATH": str(deps)})
    try:
        line = board.stderr.readline()
        assert "listening on" in line, line + board.stderr.read()
        prep = prepare(Cell("tiny-mlp", "tvm-llvm"), 1)
        spec = CompileSpec(device=Device.parse(f"rpc://{tracker.address}/kit"))
        with pytest.raises(Unsupported, match="reports no LLVM target"):
            get_backend("tvm-llvm").compile(prep.prepared.source, spec)
        compiled = get_backend("tvm-llvm").compile(prep.prepared.source, replace(spec, target=str(host_target())))
        try:
            outputs = compiled.run(prep.prepared.inputs)
            assert len(compiled.timer(prep.prepared.inputs, 3)) == 3
        finally:
            compiled.close()
        assert fidelity(outputs, prep.prepared.reference).rel_l2 < 1e-4
        assert compiled.device["runtime_only"] is True and compiled.device["llvm_mcpu"] is None
        assert compiled.device["server"].endswith(f":{port}") and compiled.device["name"]
    finally:
        os.killpg(board.pid, signal.SIGKILL)
        board.wait(timeout=30)


@pytest.mark.parametrize("verb", ["tracker", "serve"])
def test_rpc_help_says_a_server_runs_what_it_is_sent(verb):
    proc = cli("rpc", verb, "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "runs whatever code it is sent" in text and "127.0.0.1" in text
