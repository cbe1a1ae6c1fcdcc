"""Run a sweep: every cell in its own subprocess with a time limit, every record stored at once.

A crash, hang or out-of-memory kill costs one cell (recorded as failed with a one-line reason);
the sweep goes on and records already stored are never touched. Cells die with the sweep:
SIGINT or SIGTERM of the CLI kills the running cell's process group, and a cell whose parent
dies any other way (SIGKILL) is told so by the kernel and kills its own group
(chipbench.cell.die_with_parent). A cell starts isolated from the user's folder: its working
directory is a private temporary folder and `python -P` keeps that folder off `sys.path`.

A sweep's cells are forked, by default, from a fork server started once per round
(chipbench.forkserver: the harness and the runtimes imported once), with every property above
kept; CHIPBENCH_FORKSERVER=0 execs a fresh interpreter per cell instead. Each record says which
in provenance.launch.
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
from chipbench.forkclient import ForkedCell, ForkServer, ForkServerError, enabled as forkserver_enabled
from chipbench.record import RunRecord
from chipbench.store import ResultsStore, incoming_path
from chipbench.suite import Cell

PARENT_ENV = "CHIPBENCH_PARENT_PID"


class Interrupted(Exception):
    """The sweep was stopped by a signal; `signum` is it, `done` the cells stored before."""

    def __init__(self, signum: int, done: int = 0) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.done = signum, done


_live: set[subprocess.Popen | ForkedCell] = set()
_servers: set[ForkServer] = set()
_stopping = threading.Event()  # set while kill_live_cells takes the cells down
_live_lock = threading.RLock()  # re-entrant: a cell's start, holding it, may register a new server
_held_signals: list[int] = []  # SIGINT/SIGTERM that arrived while the main thread started a cell
_holding = threading.Event()  # set while the main thread starts a cell


@contextmanager
def _starting_cell() -> Iterator[Callable[[subprocess.Popen | ForkedCell], None]]:
    """Start a cell and register it as live in one step; yields the function that registers it.

    A signal that interrupted the start between the process's creation and its registration
    would leave a running cell that `kill_live_cells` cannot see. So the live lock is held
    (a sweep's kill waits until the cell is registered, whichever thread starts it) and, on the
    main thread, SIGINT/SIGTERM are held back and raised as Interrupted once the cell is
    registered."""
    main = threading.current_thread() is threading.main_thread()
    try:
        with _live_lock:
            if main:
                _holding.set()
            try:
                yield _live.add
            finally:
                if main:
                    _holding.clear()
    finally:
        if main and _held_signals:
            raise Interrupted(_held_signals.pop())


def run_isolated(cell: Cell, out_file: Path, env: dict[str, str], context: dict | None = None,
                 server: RoundServers | None = None, round_index: int = 0) -> RunRecord:
    """Run one cell in a process of its own that writes its record to `out_file`; turn any
    abnormal end into a failed record. `context` travels with the cell (e.g. the device profile).
    The process is forked by round `round_index`'s fork server of `server` (chipbench.forkserver)
    when there is one that answers, else a fresh interpreter (`python -P -m chipbench.cell`);
    the record's provenance.launch says which: {"method": "fork-server" | "exec", "preloaded"}."""
    with tempfile.TemporaryDirectory(prefix="chipbench-cell-") as tmp:
        cell_file, err_file = Path(tmp, "cell.json"), Path(tmp, "stderr")
        cell_file.write_text(json.dumps({"cell": cell.to_dict(), "context": context or {}}))
        # a pinned cell execs: torch fixes its default thread count from the CPUs it may use when
        # it loads, so one loaded before the pin would see the server's CPUs (chipbench.forkserver)
        forkable = server is not None and cell.pin is None
        forked = server.spawn(round_index, cell_file, out_file, err_file, Path(tmp)) if forkable else None
        if forked is not None:
            proc, launch = forked
            record = _wait(cell, proc, out_file, err_file)
            if record is None:  # the server died under the cell: run it again the usual way
                server.broken(round_index)
                if _stopping.is_set():  # killed with the sweep: nothing more runs
                    return _failed(cell, "stopped with the sweep")
                return run_isolated(cell, out_file, env, context)
        else:
            launch = {"method": "exec", "preloaded": []}
            record = _run_exec(cell, cell_file, out_file, err_file, env, tmp)
    record.provenance["launch"] = launch
    return record


def _run_exec(cell: Cell, cell_file: Path, out_file: Path, err_file: Path, env: dict[str, str],
              tmp: str) -> RunRecord:
    with open(err_file, "w") as err, _starting_cell() as register:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "chipbench.cell", str(cell_file), str(out_file)],
            stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True,
            cwd=tmp, env={**env, PARENT_ENV: str(os.getpid())},
        )
        register(proc)
    return _wait(cell, proc, out_file, err_file)


def _wait(cell: Cell, proc: subprocess.Popen | ForkedCell, out_file: Path, err_file: Path) -> RunRecord | None:
    """Wait at most the cell's time limit for its process (exec'd or forked), kill its group
    whatever happened (anything the cell left behind goes with it) and make its record; None
    when its fork server died first and the cell had written no record. The process is live
    already (`_starting_cell`)."""
    try:
        proc.wait(timeout=cell.timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return _failed(cell, f"timed out after {cell.timeout_s:g} s (killed)")
    except ForkServerError:  # its cell died with it, unless it had written its record first
        return _outcome(cell, -signal.SIGKILL, out_file, err_file) if out_file.exists() else None
    finally:
        _kill_group(proc)
        with _live_lock:
            _live.discard(proc)
    return _outcome(cell, proc.returncode, out_file, err_file)


def _outcome(cell: Cell, returncode: int, out_file: Path, err_file: Path) -> RunRecord:
    if out_file.exists():
        return RunRecord.from_dict(json.loads(out_file.read_text()))
    return _failed(cell, _crash_reason(returncode, err_file.read_text(errors="replace")))


class RoundServers:
    """One fork server per round of a sweep (chipbench.forkserver), started when the round's
    first cell asks for it and closed when its last cell is done, so every invocation of
    `--repeat` comes from a server (an address-space layout) of its own. A server that cannot
    be started or stops answering sends that cell and the rest of its round to exec."""

    def __init__(self, env: dict[str, str], cells_per_round: int) -> None:
        self.env = {**env, PARENT_ENV: str(os.getpid())}
        self.left: dict[int, int] = {}
        self.cells_per_round = cells_per_round
        self.servers: dict[int, ForkServer | None] = {}
        self.lock = threading.Lock()

    def _server(self, i: int) -> ForkServer | None:
        with self.lock:
            if i not in self.servers:
                try:
                    self.servers[i] = ForkServer.start(self.env)
                except ForkServerError:
                    self.servers[i] = None
                if self.servers[i] is not None:
                    with _live_lock:
                        _servers.add(self.servers[i])
            return self.servers[i]

    def spawn(self, i: int, cell_file: Path, out_file: Path, err_file: Path, cwd: Path):
        """(ForkedCell, launch) from round `i`'s server, or None: exec this cell."""
        server = self._server(i)
        if server is None:
            return None
        try:
            with _starting_cell() as register:
                proc = server.spawn(cell_file, out_file, err_file, cwd)
                register(proc)
        except ForkServerError:
            self.broken(i)
            return None
        return proc, {"method": "fork-server", "preloaded": server.preloaded, "server_pid": server.pid}

    def broken(self, i: int) -> None:
        """Round `i` execs its cells from now on; its server is killed."""
        with self.lock:
            server, self.servers[i] = self.servers.get(i), None
        if server is not None:
            _close_server(server, kill=True)

    def done(self, i: int) -> None:
        """One cell of round `i` is done: the server goes with the round's last cell."""
        with self.lock:
            self.left[i] = self.left.get(i, self.cells_per_round) - 1
            server = self.servers.get(i) if self.left[i] <= 0 else None
            if server is not None:
                self.servers[i] = None
        if server is not None:
            _close_server(server)

    def close(self) -> None:
        """Stop every server still running."""
        with self.lock:
            servers = [s for s in self.servers.values() if s is not None]
            self.servers = {i: None for i in self.servers}
        for server in servers:
            _close_server(server)


def _close_server(server: ForkServer, kill: bool = False) -> None:
    server.kill() if kill else server.close()
    with _live_lock:
        _servers.discard(server)


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


def _kill_group(proc: subprocess.Popen | ForkedCell) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=30)
    except (subprocess.TimeoutExpired, ForkServerError):  # a forked cell whose server is gone died with it
        pass


def kill_live_cells() -> None:
    """Kill every cell this process started that is still running (and its children), then the
    fork servers (chipbench.forkserver) that started any."""
    _stopping.set()
    try:
        with _live_lock:
            procs, servers = list(_live), list(_servers)
        for proc in procs:
            _kill_group(proc)
        for server in servers:
            _close_server(server, kill=True)
    finally:
        _stopping.clear()


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
            if _holding.is_set():  # a cell is being started: raised once it is registered
                _held_signals.append(signum)
                return
            raise Interrupted(signum)

        _held_signals.clear()
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

    # a server pays every import once (4-5 s): a round of one cell gains nothing from it
    forked = forkserver_enabled(env) and sum(cell.pin is None for cell in cells) >= 2
    servers = RoundServers(env, len(cells)) if forked else None

    def run_one(job: tuple[Cell, int]) -> tuple[RunRecord, Path]:
        out = incoming_path(store, uuid.uuid4().hex[:12])
        try:
            return run_isolated(job[0], out, env, context, servers, job[1]), out
        finally:
            if servers:
                servers.done(job[1])

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
        finally:
            if servers:
                servers.close()
    return records
