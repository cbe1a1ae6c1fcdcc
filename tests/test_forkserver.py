"""The cell fork server (chipbench.forkserver): same records as exec'd cells, crashes and hangs
cost one cell and not the server, one server per round of --repeat, exec when it is switched
off or cannot serve, and the libraries it preloads read the settings a cell makes after the fork."""

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from chipbench.record import validate

FAST = ["--min-duration", "0.05", "--min-count", "5", "--no-report"]


def sweep(results: Path, *args, forkserver: str = "1", check: bool = True) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "chipbench.cli", "run", *map(str, args), *FAST,
                           "--results-dir", results], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CHIPBENCH_FORKSERVER": forkserver})
    if check:
        assert proc.returncode == 0, proc.stderr
    records = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    for record in records:
        validate(record)
    return sorted(records, key=lambda r: r["created"])


def comparable(record: dict) -> dict:
    """What must not depend on how the cell's process started."""
    return {"workload": record["workload"]["name"], "backend": record["backend"]["name"],
            "status": record["status"], "verdict": record.get("verdict"), "reason": record.get("reason"),
            "fields": sorted(k for k, v in record.items() if v is not None),
            "validity": sorted((r.get("name"), r.get("passed")) for r in (record.get("validity") or [])
                               if isinstance(r, dict)),
            "accuracy": record.get("accuracy", {}).get("passed") if isinstance(record.get("accuracy"), dict) else None}


def test_a_single_cell_sweep_execs_its_cell(tmp_path):
    (record,) = sweep(tmp_path, "-w", "tiny-mlp", "-b", "null")  # a server's imports would cost more than one cell's
    assert record["provenance"]["launch"]["method"] == "exec"


def test_a_sweep_through_the_server_gives_the_records_exec_gives(tmp_path):
    cells = ("-w", "tiny-mlp", "-b", "null,ort-cpu")  # a server serves rounds of two cells or more
    forked = sweep(tmp_path / "fork", *cells)
    execed = sweep(tmp_path / "exec", *cells, forkserver="0")
    assert [comparable(r) for r in forked] == [comparable(r) for r in execed]
    assert [r["verdict"] for r in forked] == ["VALID", "VALID"]
    assert {r["provenance"]["launch"]["method"] for r in forked} == {"fork-server"}
    assert {r["provenance"]["launch"]["method"] for r in execed} == {"exec"}  # CHIPBENCH_FORKSERVER=0
    preloaded = forked[0]["provenance"]["launch"]["preloaded"]
    assert preloaded[:2] == ["chipbench.cell", "numpy"] and "onnxruntime" in preloaded
    assert execed[0]["provenance"]["launch"]["preloaded"] == []


def test_a_crash_and_a_hang_cost_one_cell_each_and_the_server_serves_the_next(tmp_path):
    records = sweep(tmp_path, "-w", "tiny-mlp", "-b", "crash-double,hang-double,null", "--timeout", "3",
                    check=False)
    by = {r["backend"]["name"]: r for r in records}
    assert by["crash-double"]["status"] == "failed" and "killed by SIGABRT" in by["crash-double"]["reason"]
    assert by["hang-double"]["status"] == "failed" and "timed out after 3 s" in by["hang-double"]["reason"]
    assert by["null"]["verdict"] == "VALID"
    launches = [r["provenance"]["launch"] for r in records]
    assert {launch["method"] for launch in launches} == {"fork-server"}
    (server,) = {launch["server_pid"] for launch in launches}  # the server outlived both
    assert not psutil.pid_exists(server) or psutil.Process(server).status() == psutil.STATUS_ZOMBIE  # and the sweep


def test_each_round_of_repeat_comes_from_a_server_of_its_own(tmp_path):
    records = sweep(tmp_path, "-w", "tiny-mlp,vibration-cnn1d", "-b", "null", "--repeat", "2")
    by_round: dict[int, set[int]] = {}
    for r in records:
        by_round.setdefault(r["provenance"]["sweep"]["invocation"], set()).add(r["provenance"]["launch"]["server_pid"])
    assert sorted(by_round) == [0, 1] and all(len(pids) == 1 for pids in by_round.values())
    assert by_round[0] != by_round[1]


def run_python(code: str, **env) -> str:
    proc = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


FORKED = """
import os, sys
from chipbench.forkserver import preload
loaded = preload({names!r})
pid = os.fork()
if pid == 0:
    try:
{child}
    except BaseException as exc:
        print('child failed:', exc, file=sys.stderr)
        os._exit(1)
    os._exit(0)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def forked(names: tuple[str, ...], child: str, **env) -> str:
    body = "\n".join("        " + line for line in child.strip().splitlines())
    return run_python(FORKED.format(names=names, child=body), **env)


def test_tvm_reads_its_thread_count_after_the_fork_not_at_import():
    pytest.importorskip("tvm")
    child = """
os.environ['TVM_NUM_THREADS'] = '1'   # as backends/tvm.py does, after the server imported tvm
import tvm
print(tvm.get_global_func('runtime.NumThreads')())
"""
    assert forked(("tvm", "tvm.relax", "tvm.runtime"), child, TVM_NUM_THREADS="2") == "1"


PROBE = """
import os, json
os.sched_setaffinity(0, {{{cpu}}})   # chipbench.resources.apply_pin, in the cell, before any backend
os.environ['TVM_NUM_THREADS'] = '1'
seen = {{}}
try:
    import torch
    seen['torch'] = [torch.get_num_threads(), torch.get_num_interop_threads()]
except ImportError:
    pass
import numpy as np, onnx, onnxruntime as ort
from onnx import helper, TensorProto
graph = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'g',
                          [helper.make_tensor_value_info('x', TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info('y', TensorProto.FLOAT, [4])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
model.ir_version = 8
before = len(os.listdir('/proc/self/task'))
session = ort.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])
seen['onnxruntime'] = len(os.listdir('/proc/self/task')) - before
try:
    import openvino as ov
    compiled = ov.Core().compile_model(ov.Core().read_model(model.SerializeToString(), b''), 'CPU')
    seen['openvino'] = int(compiled.get_property('INFERENCE_NUM_THREADS'))
except ImportError:
    pass
try:
    import tvm
    seen['tvm'] = int(tvm.get_global_func('runtime.NumThreads')())
except ImportError:
    pass
print(json.dumps(seen, sort_keys=True))
"""


def test_the_libraries_preloaded_size_their_threads_from_the_cell_not_the_server():
    """Pinned to one CPU (and TVM_NUM_THREADS set) after the fork, ONNX Runtime, OpenVINO and TVM
    size their thread pools as in a fresh interpreter that pinned itself before importing them.
    torch does not (its default intra-op count is fixed when it loads): pinned cells are exec'd."""
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs to pin to one")
    from chipbench.forkserver import PRELOAD

    probe = PROBE.format(cpu=min(os.sched_getaffinity(0)))
    fresh = json.loads(run_python(probe, TVM_NUM_THREADS="2"))
    body = "\n".join("        " + line for line in probe.strip().splitlines())
    after_fork = json.loads(run_python(FORKED.format(names=PRELOAD, child=body), TVM_NUM_THREADS="2"))
    torch_fresh, torch_forked = fresh.pop("torch", None), after_fork.pop("torch", None)
    assert after_fork == fresh
    assert fresh.get("tvm", 1) == 1
    if torch_fresh is not None:
        assert torch_fresh[0] == 1 and torch_forked[0] == len(os.sched_getaffinity(0))


def test_a_pinned_cell_is_execed(tmp_path):
    cpu = min(os.sched_getaffinity(0))
    records = sweep(tmp_path, "-w", "tiny-mlp,vibration-cnn1d", "-b", "null", "--pin", str(cpu))
    assert [r["provenance"]["launch"] for r in records] == [{"method": "exec", "preloaded": []}] * 2


def test_blas_works_in_a_child_forked_after_numpy_started_its_threads():
    child = """
import numpy as np
import scipy.linalg
a = np.random.default_rng(0).standard_normal((512, 512))
b = a @ a.T
assert np.allclose(b, b.T) and np.isfinite(b).all()
assert np.isfinite(scipy.linalg.eigh(b, eigvals_only=True)).all()  # scipy's own OpenBLAS too
print('ok')
"""
    parent_warmup = "import numpy as np\nnp.ones((512, 512)) @ np.ones((512, 512))\n"
    code = FORKED.format(names=("numpy", "scipy.stats"),
                         child="\n".join("        " + l for l in child.strip().splitlines()))
    code = code.replace("pid = os.fork()", parent_warmup + "pid = os.fork()")
    assert run_python(code) == "ok"


def fast_cell(backend: str):
    from chipbench.scenarios import MeasureSettings
    from chipbench.suite import Cell

    return Cell(workload="tiny-mlp", backend=backend, timeout_s=120,
                settings=MeasureSettings(min_duration_s=0.05, min_count=5))


def test_a_server_that_dies_under_a_cell_sends_it_and_its_round_to_exec(tmp_path, monkeypatch):
    import threading
    import time

    from chipbench import runner
    from chipbench.forkclient import ForkedCell

    monkeypatch.setenv("SLEEPY_SECONDS", "1")
    env = runner.cell_environment()
    servers = runner.RoundServers(env, cells_per_round=2)

    def kill_the_server_once_the_cell_runs():
        end = time.monotonic() + 120
        while time.monotonic() < end:
            with runner._live_lock:
                forked = [p for p in runner._live if isinstance(p, ForkedCell)]
            if forked:
                forked[0].server.proc.kill()
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_server_once_the_cell_runs)
    killer.start()
    try:
        first = runner.run_isolated(fast_cell("sleepy-double"), tmp_path / "a.json", env, None, servers, 0)
        killer.join()
        second = runner.run_isolated(fast_cell("null"), tmp_path / "b.json", env, None, servers, 0)
    finally:
        servers.close()
    assert first.status == "ok" and first.provenance["launch"]["method"] == "exec"
    assert second.status == "ok" and second.provenance["launch"]["method"] == "exec"


def test_a_server_that_cannot_start_sends_its_round_to_exec(tmp_path, monkeypatch):
    from chipbench import forkclient, runner

    def refuse(env, timeout_s=0):
        raise forkclient.ForkServerError("fork server did not start: test")

    monkeypatch.setattr(forkclient.ForkServer, "start", staticmethod(refuse))
    servers = runner.RoundServers(runner.cell_environment(), cells_per_round=1)
    record = runner.run_isolated(fast_cell("null"), tmp_path / "a.json", runner.cell_environment(), None, servers, 0)
    assert record.status == "ok" and record.provenance["launch"] == {"method": "exec", "preloaded": []}
