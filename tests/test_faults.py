"""Faults a sweep must survive without losing a result: signals, full or read-only disks,
concurrent writers, and reruns that fail."""

import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from chipbench.store import ResultsStore

FAST = ["--min-duration", "0.05", "--min-count", "5", "--no-report"]


def start_cli(*args, **env):
    return subprocess.Popen([sys.executable, "-m", "chipbench.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env})


def wait_for(condition, timeout=120.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def running_cell(cli: subprocess.Popen) -> psutil.Process | None:
    """The cell subprocess the CLI is running, once its backend is compiling: an exec'd
    `chipbench.cell`, or a child the fork server (chipbench.forkserver) forked."""
    try:
        children = psutil.Process(cli.pid).children(recursive=True)
        cells = [p for p in children if "chipbench.cell" in " ".join(p.cmdline())
                 or ("chipbench.forkserver" in " ".join(p.cmdline())
                     and "chipbench.forkserver" in " ".join(p.parent().cmdline()))]
    except (psutil.NoSuchProcess, AttributeError):
        return None
    return cells[0] if cells else None


def stored(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))]


def interrupt_during_the_second_cell(results: Path, sig: int):
    """Start a two-cell sweep, wait until the first cell is stored and the second is running,
    then send `sig` to the CLI. Returns (CLI process, the second cell's process)."""
    cli = start_cli("run", "-w", "tiny-mlp", "-b", "null,sleepy-double", *FAST, "--results-dir", results)
    wait_for(lambda: len(stored(results)) == 1, what="the first record")
    cell = wait_for(lambda: running_cell(cli), what="the second cell")
    cli.send_signal(sig)
    return cli, cell


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_sweep_kills_the_cell_and_keeps_what_was_measured(launch, tmp_path, sig):
    cli, cell = interrupt_during_the_second_cell(tmp_path, sig)
    _, err = cli.communicate(timeout=60)
    assert cli.returncode == 128 + sig
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "--resume" in lines[0] and "Traceback" not in err
    assert gone(cell)
    assert [r["backend"]["name"] for r in stored(tmp_path)] == ["null"]
    assert [r.backend["name"] for r in ResultsStore(tmp_path).records()] == ["null"]


def gone(process: psutil.Process) -> bool:
    return not psutil.pid_exists(process.pid) or process.status() == psutil.STATUS_ZOMBIE


def test_sigkill_of_the_cli_takes_the_cell_and_its_children_with_it_even_in_native_code(launch, tmp_path):
    cli = start_cli("run", "-w", "tiny-mlp", "-b", "null,native-sleepy-double", *FAST, "--results-dir", tmp_path)
    wait_for(lambda: len(stored(tmp_path)) == 1, what="the first record")
    cell = wait_for(lambda: running_cell(cli), what="the second cell")
    child = wait_for(lambda: next((p for p in cell.children() if p.name() == "sleep"), None), what="its child")
    cli.send_signal(signal.SIGKILL)
    cli.wait(timeout=30)
    wait_for(lambda: gone(cell) and gone(child), timeout=30, what="the orphaned cell and its child to die")
    assert [r.backend["name"] for r in ResultsStore(tmp_path).records()] == ["null"]


def test_an_interrupted_sweep_resumes_where_it_stopped(launch, tmp_path):
    cli, _ = interrupt_during_the_second_cell(tmp_path, signal.SIGINT)
    cli.communicate(timeout=60)
    again = start_cli("run", "-w", "tiny-mlp", "-b", "null,sleepy-double", *FAST, "--results-dir", tmp_path,
                      "--resume", SLEEPY_SECONDS="0")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "resume: 1 of 2 cell(s) already measured" in err
    names = sorted(r.backend["name"] for r in ResultsStore(tmp_path).records())
    assert names == ["null", "sleepy-double"]  # null was not measured twice


def run_in_process(monkeypatch, capsys, *args) -> tuple[int, str]:
    """The CLI's own entry point in this process (so a fault can be injected into it)."""
    from chipbench import cli

    monkeypatch.setattr(sys, "argv", ["chipbench", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return exit_info.value.code, capsys.readouterr().err


def test_a_full_disk_stops_the_sweep_with_one_line_and_the_record_waits_for_the_next_run(
        tmp_path, monkeypatch, capsys):
    from chipbench import paths, store

    real = paths.atomic_write_bytes
    calls = []

    def fills_up(path, data):
        if Path(path).parent.name == "runs":
            calls.append(path)
            if len(calls) == 2:  # the second record finds the disk full
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(store, "atomic_write_text", lambda path, text: fills_up(path, text.encode()))
    code, err = run_in_process(monkeypatch, capsys, "run", "-w", "tiny-mlp", "-b", "null,ort-cpu,null", *FAST,
                               "--results-dir", tmp_path)
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "Traceback" not in err
    assert len(ResultsStore(tmp_path).records()) == 1  # the third cell never ran
    assert len(list((tmp_path / "incoming").glob("*.json"))) == 1  # the measured record is kept
    monkeypatch.undo()
    code, err = run_in_process(monkeypatch, capsys, "store", "rebuild", "--results-dir", tmp_path)
    assert code == 0, err
    assert sorted(r.backend["name"] for r in ResultsStore(tmp_path).records()) == ["null", "ort-cpu"]


def test_a_report_that_cannot_be_written_leaves_the_previous_one_whole(tmp_path, monkeypatch, capsys):
    from chipbench import paths

    subprocess.run([sys.executable, "-m", "chipbench.cli", "run", "-w", "tiny-mlp", "-b", "null",
                    "--min-duration", "0.05", "--min-count", "5", "--results-dir", tmp_path],
                   check=True, capture_output=True, env=os.environ.copy())
    before = (tmp_path / "report.html").read_text()
    assert before.startswith("<!DOCTYPE html>")

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(paths.os, "fsync", lambda fd: no_space(None))
    code, err = run_in_process(monkeypatch, capsys, "report", "--results-dir", tmp_path)
    assert code == 1 and len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert (tmp_path / "report.html").read_text() == before
    assert not list(tmp_path.glob(".report*.tmp"))


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only results dir: a read-only tmpfs where this machine lets us mount one (root
    ignores file permissions), else None (the test injects the write error instead)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_read_only_results_dir_is_refused_before_any_cell_runs(tmp_path, read_only_dir, monkeypatch, capsys):
    args = ["run", "-w", "tiny-mlp", "-b", "sleepy-double", *FAST]
    if read_only_dir is not None:
        proc = subprocess.run([sys.executable, "-m", "chipbench.cli", *args, "--results-dir", read_only_dir],
                              capture_output=True, text=True, timeout=60, env=os.environ.copy())
        code, err = proc.returncode, proc.stderr
    else:
        from pathlib import Path as P

        def read_only(self, *a, **k):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(P, "write_bytes", read_only)
        code, err = run_in_process(monkeypatch, capsys, *args, "--results-dir", tmp_path / "r")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Read-only file system" in lines[0], err


def test_concurrent_sweeps_into_one_results_dir_keep_every_record(tmp_path):
    sweeps = [start_cli("run", "-w", "tiny-mlp", "-b", "null,ort-cpu,null", *FAST, "--seed", str(seed),
                        "--results-dir", tmp_path) for seed in (1, 2)]
    for sweep in sweeps:
        _, err = sweep.communicate(timeout=300)
        assert sweep.returncode == 0, err
    records = ResultsStore(tmp_path).records()
    assert len(records) == 6 and len({r.id for r in records}) == 6
    assert len(list((tmp_path / "runs").glob("*.json"))) == 6
    with sqlite3.connect(tmp_path / "chipbench.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 6


def test_a_rerun_that_fails_keeps_the_good_record_in_the_history(tmp_path):
    args = ["run", "-w", "tiny-mlp", "-b", "flaky-double", *FAST, "--results-dir", tmp_path]
    assert start_cli(*args).wait(timeout=300) == 0
    assert start_cli(*args, FLAKY_FAIL="1").wait(timeout=300) == 1
    store = ResultsStore(tmp_path)
    assert [r.status for r in store.records()] == ["ok", "failed"]
    assert [r.status for r in store.latest()] == ["failed"]  # the report shows what happened last


def test_nothing_in_the_working_folder_runs_inside_a_cell(launch, tmp_path):
    """Cells start as `python -P` in a private folder: a module lying in the user's folder is
    never imported, whatever its name, and relative paths still mean the user's folder."""
    for module in ("tomllib", "numpy", "chipbench"):
        (tmp_path / f"{module}.py").write_text(f"open({str(tmp_path / (module + '.RAN'))!r}, 'w').close()\n")
    chipbench = Path(sys.executable).with_name("chipbench")
    # two cells: a round of one cell never starts a fork server
    proc = subprocess.run([str(chipbench), "run", "-w", "tiny-mlp", "-b", "null,ort-cpu", *FAST,
                           "--results-dir", "res"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr
    assert [r["verdict"] for r in stored(tmp_path / "res")] == ["VALID", "VALID"]
    assert not list(tmp_path.glob("*.RAN"))


def test_a_signal_while_a_cell_starts_waits_until_the_cell_is_live_then_stops_the_sweep():
    """The race behind a cell outliving its sweep: SIGTERM landing between a cell's process
    being created and its registration. It is held back and raised once the cell is live, so
    the sweep's kill finds it."""
    from chipbench import runner

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        with pytest.raises(runner.Interrupted) as stopped, runner.stop_cells_on_signal():
            with runner._starting_cell() as register:
                os.kill(os.getpid(), signal.SIGTERM)  # delivered here, inside the start
                assert sleeper not in runner._live
                register(sleeper)
            raise AssertionError("the held signal was not raised")
        assert stopped.value.signum == signal.SIGTERM
        assert sleeper.wait(timeout=10) == -signal.SIGKILL  # stop_cells_on_signal killed it on the way out
    finally:
        sleeper.kill()
        runner._live.discard(sleeper)
