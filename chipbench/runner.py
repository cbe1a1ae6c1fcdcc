"""Run a sweep: every cell in its own subprocess with a time limit, every record stored at once.

A crash, hang or out-of-memory kill costs one cell (recorded as failed with a one-line reason);
the sweep goes on and records already stored are never touched. Cells die with the sweep:
SIGINT or SIGTERM of the CLI kills the running cell's process group, and a cell whose parent
dies any other way (SIGKILL) is told so by the kernel and kills its own group
(chipbench.cell.die_with_parent). A cell starts isolated from the user's folder: its working
directory is a private temporary folder and `python -P` keeps that folder off `sys.path`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from chipbench.fleet import fleet_key, spread
from chipbench.record import RunRecord
from chipbench.store import ResultsStore, incoming_path
from chipbench.suite import Cell

PARENT_ENV = "CHIPBENCH_PARENT_PID"


class Interrupted(Exception):
    """The sweep was stopped by a signal; `signum` is it, `done` the cells stored before."""

    def __init__(self, signum: int, done: int = 0) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.done = signum, done


_live: set[subprocess.Popen] = set()
_live_lock = threading.Lock()


def run_isolated(cell: Cell, out_file: Path, env: dict[str, str], context: dict | None = None) -> RunRecord:
    """Run one cell in a fresh interpreter that writes its record to `out_file`; turn any
    abnormal end into a failed record. `context` travels with the cell (e.g. the device profile)."""
    with tempfile.TemporaryDirectory(prefix="chipbench-cell-") as tmp:
        cell_file, err_file = Path(tmp, "cell.json"), Path(tmp, "stderr")
        cell_file.write_text(json.dumps({"cell": cell.to_dict(), "context": context or {}}))
        with open(err_file, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-P", "-m", "chipbench.cell", str(cell_file), str(out_file)],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True,
                cwd=tmp, env={**env, PARENT_ENV: str(os.getpid())},
            )
            with _live_lock:
                _live.add(proc)
            try:
                proc.wait(timeout=cell.timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return _failed(cell, f"timed out after {cell.timeout_s:g} s (killed)")
            finally:
                _kill_group(proc)  # whatever the cell left behind in its group goes with it
                with _live_lock:
                    _live.discard(proc)
        if out_file.exists():
            return RunRecord.from_dict(json.loads(out_file.read_text()))
        return _failed(cell, _crash_reason(proc.returncode, err_file.read_text(errors="replace")))


def run_cell(cell: Cell) -> RunRecord:
    """One cell in its own process, stored nowhere (a benchmark's or a check's one-off cell)."""
    with tempfile.TemporaryDirectory(prefix="chipbench-record-") as tmp:
        return run_isolated(cell, Path(tmp) / "record.json", cell_environment())


def cell_environment() -> dict[str, str]:
    """The environment a cell starts with: this one, with Python's unsafe path off and the
    paths the user set (PYTHONPATH, the cache, tuning dirs) made absolute: the cell runs in a
    folder of its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSTARTUP", "PYTHONINSPECT")}
    env["PYTHONSAFEPATH"] = "1"
    for name in ("PYTHONPATH", "CHIPBENCH_CACHE", "CHIPBENCH_TUNING_DIRS"):  # paths the user may give relative
        if env.get(name):
            env[name] = os.pathsep.join(str(Path(p).resolve()) for p in env[name].split(os.pathsep) if p)
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def kill_live_cells() -> None:
    """Kill every cell this process started that is still running (and its children)."""
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        _kill_group(proc)


def _crash_reason(returncode: int, stderr: str) -> str:
    if returncode < 0:
        sig = signal.Signals(-returncode).name
        hint = " (out of memory?)" if sig == "SIGKILL" else ""
        return f"crashed: killed by {sig}{hint}"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    last = lines[-1][:300] if lines else "no output"
    return f"crashed: exit code {returncode}: {last}"


def _failed(cell: Cell, reason: str) -> RunRecord:
    from chipbench.cell import base_record  # imports the harness only where a record is made

    return base_record(cell, "failed", reason)


def device_summary(results_dir: Path, device: dict | None = None) -> dict | None:
    """The measured ceilings (`chipbench probe`) of the device a run used (`provenance.device`;
    this machine's CPU when it names none), attached to every run made here."""
    from chipbench.probe import load_profile_for

    profile = load_profile_for(results_dir, device)
    if profile is None:
        return None
    return {"key": profile.key, "peak_gflops": profile.peak_gflops, "bandwidth_gbps": profile.bandwidth_gbps,
            "measured_at": profile.measured_at, "quick": profile.quick,
            "reference_loop_s": profile.details.get("reference_loop_s")}


@contextmanager
def stop_cells_on_signal() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted in the sweep, and the running cells are killed on
    the way out, whatever ends the sweep. Handlers are only installed on the main thread."""
    installed = {}
    if threading.current_thread() is threading.main_thread():
        def handler(signum, _frame):
            raise Interrupted(signum)

        for sig in (signal.SIGINT, signal.SIGTERM):
            installed[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        kill_live_cells()
        for sig, previous in installed.items():
            signal.signal(sig, previous)


def run_cells(cells: list[Cell], store: ResultsStore,
              on_done: Callable[[Cell, RunRecord], None] | None = None, repeat: int = 1) -> list[RunRecord]:
    """Run and store each cell `repeat` times, each time in a fresh process, in rounds (every
    cell once, then every cell again): a machine's drift between processes then shows as the
    spread of one cell's invocations rather than as a change of that cell (repetition at the
    level of invocations, Kalibera and Jones, "Rigorous Benchmarking in Reasonable Time",
    ISMM 2013). Every record says which `sweep` it belongs to: {"id", "invocation" (0-based),
    "invocations"}; `chipbench compare` reads a cell's invocations of one sweep together.
    Raises StoreError when a record cannot be stored (it stays in `incoming/` for the next
    run) and Interrupted on SIGINT/SIGTERM. ValueError when `repeat` < 1."""
    if repeat < 1:
        raise ValueError(f"repeat {repeat} < 1")
    records: list[RunRecord] = []
    context = {"device_profile": device_summary(store.root)}
    # tvm-llvm-tuned finds the databases `chipbench tune` wrote under this results dir
    dirs = os.pathsep.join(filter(None, [str((store.root / "tuning").resolve()),
                                         os.environ.get("CHIPBENCH_TUNING_DIRS")]))
    env = {**cell_environment(), "CHIPBENCH_TUNING_DIRS": dirs}
    sweep_id = uuid.uuid4().hex[:12]
    jobs = [(cell, i) for i in range(repeat) for cell in cells]

    def run_one(job: tuple[Cell, int]) -> tuple[RunRecord, Path]:
        out = incoming_path(store, uuid.uuid4().hex[:12])
        return run_isolated(job[0], out, env, context), out

    with stop_cells_on_signal():
        try:
            # cells sent to an RPC key run as many at once as it has servers; local ones in turn
            for (cell, i), (record, out) in spread(jobs, run_one, key=lambda job: fleet_key(job[0])):
                if record.device_id != "cpu" and record.provenance.get("device_profile") is None:  # a GPU's own ceilings
                    record.provenance["device_profile"] = device_summary(store.root, record.provenance.get("device"))
                record.provenance["sweep"] = {"id": sweep_id, "invocation": i, "invocations": repeat}
                store.add(record)
                out.unlink(missing_ok=True)
                records.append(record)
                if on_done:
                    on_done(cell, record)
        except Interrupted as exc:
            exc.done = len(records)
            raise
    return records
