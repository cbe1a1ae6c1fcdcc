"""The parent's side of a conformance worker: send a case, wait at most a time limit, and
replace the worker when it dies (CRASHED) or does not answer in time (TIMED OUT, killed).

Each worker is `python -P -m chipbench.conformance.worker BACKEND` in its own process group,
started in a private temporary folder (nothing in the user's folder is imported); its stderr
goes to a file whose last line explains a crash.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chipbench.conformance.cases import Case

START_TIMEOUT_S = 120.0  # importing a backend (TVM) on a loaded machine


class WorkerGone(Exception):
    """The worker died or hung; the message is one line saying which."""


class Worker:
    """A running worker for one backend. `run(case, timeout_s)` returns the worker's result,
    or a CRASHED / TIMED OUT result after which the next call starts a fresh worker."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.proc: subprocess.Popen | None = None
        self.versions: dict[str, str] = {}
        self.starts = 0
        self._tmp = tempfile.TemporaryDirectory(prefix="chipbench-conformance-")
        self._buffer = b""

    def _start(self) -> None:
        self.starts += 1
        self._stderr_path = Path(self._tmp.name) / f"stderr-{self.starts}"
        with open(self._stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-P", "-m", "chipbench.conformance.worker", self.backend],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, cwd=self._tmp.name,
                start_new_session=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        self._buffer = b""
        ready = json.loads(self._read_line(START_TIMEOUT_S, "starting"))
        self.versions = ready.get("versions", {})

    def run(self, case: Case, timeout_s: float) -> dict:
        """The result of `case` on this backend; a crash or hang becomes that case's result."""
        start = time.perf_counter()
        try:
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            self.proc.stdin.write((json.dumps({"case": case.to_dict()}) + "\n").encode())
            self.proc.stdin.flush()
            return json.loads(self._read_line(timeout_s, case.name))
        except (WorkerGone, BrokenPipeError) as exc:
            outcome = "TIMED OUT" if isinstance(exc, WorkerGone) and exc.args[1] == "timeout" else "CRASHED"
            detail = exc.args[0] if isinstance(exc, WorkerGone) else self._crash_reason()
            self.stop()
            return {"case": case.name, "backend": self.backend, "outcome": outcome, "detail": detail,
                    "max_abs": None, "max_rel": None, "node": None, "fault_by": None, "converted": None,
                    "cached": False, "seconds": round(time.perf_counter() - start, 4)}

    def _read_line(self, timeout_s: float, what: str) -> str:
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise WorkerGone(f"no answer within {timeout_s:g} s (worker killed)", "timeout")
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise WorkerGone(self._crash_reason(), "crash")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def _crash_reason(self) -> str:
        code = self.proc.wait(timeout=10) if self.proc else None
        how = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 and -code in
               signal.Signals._value2member_map_ else f"exited with status {code}")
        try:
            lines = [ln.strip() for ln in self._stderr_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            lines = []
        last = next((ln for ln in reversed(lines) if not ln.startswith(("File ", "^", "~"))), "")
        return f"worker {how}" + (f": {last[:300]}" if last else "")

    def stop(self) -> None:
        """Kill the worker's process group (it and anything it started)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.proc = None

    def close(self) -> None:
        """End the worker (stdin closed, then killed if it lingers) and remove its folder."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.stop()
        self._tmp.cleanup()
