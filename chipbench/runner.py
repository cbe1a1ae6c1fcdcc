"""Run a sweep: every cell in its own subprocess with a time limit, every record stored at once.

A crash, hang or out-of-memory kill costs one cell (recorded as failed with a one-line reason);
the sweep goes on and records already stored are never touched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from chipbench.record import RunRecord
from chipbench.store import ResultsStore
from chipbench.suite import Cell


def run_isolated(cell: Cell, env: dict[str, str] | None = None) -> RunRecord:
    """Run one cell in a fresh interpreter; turn any abnormal end into a failed record."""
    with tempfile.TemporaryDirectory(prefix="chipbench-cell-") as tmp:
        cell_file, out_file, err_file = Path(tmp, "cell.json"), Path(tmp, "record.json"), Path(tmp, "stderr")
        cell_file.write_text(json.dumps(cell.to_dict()))
        with open(err_file, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "chipbench.cell", str(cell_file), str(out_file)],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True, env=env,
            )
            try:
                proc.wait(timeout=cell.timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return _failed(cell, f"timed out after {cell.timeout_s:g} s (killed)")
        if out_file.exists():
            return RunRecord.from_dict(json.loads(out_file.read_text()))
        return _failed(cell, _crash_reason(proc.returncode, err_file.read_text(errors="replace")))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


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
            "measured_at": profile.measured_at, "quick": profile.quick}


def run_cells(cells: list[Cell], store: ResultsStore,
              on_done: Callable[[Cell, RunRecord], None] | None = None) -> list[RunRecord]:
    records = []
    device = device_summary(store.root)
    # tvm-llvm-tuned finds the databases `chipbench tune` wrote under this results dir
    dirs = os.pathsep.join(filter(None, [str(store.root / "tuning"), os.environ.get("CHIPBENCH_TUNING_DIRS")]))
    env = {**os.environ, "CHIPBENCH_TUNING_DIRS": dirs}
    for cell in cells:
        record = run_isolated(cell, env)
        on = record.provenance.get("device") or {}
        record.provenance["device_profile"] = device if on.get("kind", "cpu") == "cpu" else device_summary(store.root, on)
        store.add(record)
        records.append(record)
        if on_done:
            on_done(cell, record)
    return records
