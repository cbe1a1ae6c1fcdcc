"""The runner's side of the cell fork server (chipbench.forkserver): start it, send it cells,
wait for them, kill them, close it.

`ForkServer.start(env)` starts `python -P -m chipbench.forkserver` in a private temporary
folder with exactly `env`, in a session of its own, and waits for its ready line (which names
the modules it preloaded). `server.spawn(cell_file, out_file, err_file, cwd)` returns a
`ForkedCell` whose `pid`, `wait(timeout)`, `returncode` and `poll()` behave as
subprocess.Popen's do, so the runner times, kills (`os.killpg(pid, SIGKILL)`) and judges a forked
cell exactly as an exec'd one. Several threads may spawn and wait at once. Any failure to start
or talk to the server raises ForkServerError; the runner then falls back to exec.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ENV_SWITCH = "CHIPBENCH_FORKSERVER"  # "0" (or off/false/no): exec every cell, as before
READY_TIMEOUT_S = 300.0  # importing torch + TVM on a loaded 2-core machine takes seconds, not minutes


class ForkServerError(RuntimeError):
    """The fork server could not be started or stopped answering (one line)."""


def enabled(env: dict[str, str] | None = None) -> bool:
    """Whether sweeps use the fork server: yes unless CHIPBENCH_FORKSERVER is 0/off/false/no."""
    value = (env if env is not None else os.environ).get(ENV_SWITCH, "1")
    return value.strip().lower() not in ("0", "off", "false", "no")


class ForkedCell:
    """A cell process forked by the server; Popen's `pid`, `returncode`, `poll()`, `wait()`."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self.server, self.pid = server, pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The return code once the server reported the end, else None."""
        if self.returncode is None:
            self.returncode = self.server._ended.get(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the end; subprocess.TimeoutExpired after `timeout` seconds, ForkServerError
        when the server died first (its children die with it)."""
        self.returncode = self.server._wait_end(self.pid, timeout)
        return self.returncode


class ForkServer:
    """One running fork server (see the module docstring); `preloaded` lists its modules."""

    def __init__(self, proc: subprocess.Popen, tmp: tempfile.TemporaryDirectory, hello: dict) -> None:
        self.proc, self._tmp = proc, tmp
        self.pid: int = int(hello["pid"])
        self.preloaded: list[str] = list(hello.get("preloaded", []))
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._started: dict[int, int | str] = {}  # request id -> pid, or the server's error
        self._ended: dict[int, int] = {}  # pid -> return code
        self._dead: str | None = None
        self._reader = threading.Thread(target=self._read, name="chipbench-forkserver", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, env: dict[str, str], timeout_s: float = READY_TIMEOUT_S) -> ForkServer:
        """Start a server with exactly `env` and wait for its ready line. ForkServerError with the
        reason when it exits, says something else or is not ready within `timeout_s` seconds."""
        tmp = tempfile.TemporaryDirectory(prefix="chipbench-forkserver-")
        err = open(Path(tmp.name) / "stderr", "w+b")
        try:
            proc = subprocess.Popen([sys.executable, "-P", "-m", "chipbench.forkserver"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=err, cwd=tmp.name, env=env,
                                    start_new_session=True)
        except OSError as exc:
            err.close()
            tmp.cleanup()
            raise ForkServerError(f"cannot start the fork server: {exc}") from None
        hello: dict = {}
        reader = threading.Thread(target=lambda: hello.update(_first_line(proc)), daemon=True)
        reader.start()
        reader.join(timeout_s)
        if not hello.get("ready"):
            _kill(proc)
            err.seek(0)
            lines = [line for line in err.read().decode(errors="replace").splitlines() if line.strip()]
            err.close()
            tmp.cleanup()
            why = hello.get("error") or (lines[-1] if lines else f"not ready within {timeout_s:g} s")
            raise ForkServerError(f"fork server did not start: {why}")
        err.close()
        return cls(proc, tmp, hello)

    def spawn(self, cell_file: Path, out_file: Path, err_file: Path, cwd: Path) -> ForkedCell:
        """Have the server fork a cell `chipbench.cell.main([cell_file, out_file])` with stdout
        and stderr to `err_file`, in `cwd`. ForkServerError when the server cannot do it."""
        rid = next(self._ids)
        line = json.dumps({"id": rid, "cell": str(cell_file), "out": str(out_file), "err": str(err_file),
                           "cwd": str(cwd)}) + "\n"
        with self._write_lock:
            if self._dead:
                raise ForkServerError(self._dead)
            try:
                self.proc.stdin.write(line.encode())
                self.proc.stdin.flush()
            except (OSError, ValueError) as exc:
                raise ForkServerError(f"fork server: cannot send the cell: {exc}") from None
        with self._cond:
            if not self._cond.wait_for(lambda: rid in self._started or self._dead, timeout=60):
                raise ForkServerError("fork server did not answer within 60 s")
            answer = self._started.pop(rid, None)
            if answer is None:
                raise ForkServerError(self._dead or "fork server stopped")
        if isinstance(answer, str):
            raise ForkServerError(f"fork server refused the cell: {answer}")
        return ForkedCell(self, answer)

    def _wait_end(self, pid: int, timeout: float | None) -> int:
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while pid not in self._ended:
                if self._dead:
                    raise ForkServerError(self._dead)
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(f"cell pid {pid}", timeout)
                self._cond.wait(left)
            return self._ended[pid]

    def _read(self) -> None:
        try:
            for raw in self.proc.stdout:
                try:
                    message = json.loads(raw)
                except ValueError:
                    continue
                with self._cond:
                    if "returncode" in message:
                        self._ended[int(message["pid"])] = int(message["returncode"])
                    elif "id" in message and message["id"] is not None:
                        self._started[int(message["id"])] = (int(message["pid"]) if "pid" in message
                                                             else str(message.get("error", "no pid")))
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._dead = self._dead or f"fork server (pid {self.proc.pid}) stopped"
                self._cond.notify_all()

    @property
    def alive(self) -> bool:
        """Whether the server still answers (it has not closed its output)."""
        return self._dead is None and self.proc.poll() is None

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the server: close its stdin (it kills any live cell's group and exits), and kill
        its group if it has not gone within `timeout_s` seconds. Idempotent."""
        with self._write_lock:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def kill(self) -> None:
        """Kill the server's group (its watchdog) at once; its cells die with it."""
        _kill(self.proc)
        self._reader.join(timeout=5)
        self._tmp.cleanup()


def _first_line(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline()
    try:
        message = json.loads(line) if line else {}
    except ValueError:
        return {"error": f"unexpected output {line[:200]!r}"}
    return message if isinstance(message, dict) else {}


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
