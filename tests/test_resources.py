"""Resources and cold start in a real cell's record; --pin and --threads checked and honoured."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import pytest

from chipbench.record import validate
from chipbench.resources import PinError, allowed_cpus, check_pin, format_cpus, parse_cpus, peak_rss_bytes
from chipbench.scenarios import MeasureSettings
from chipbench.suite import Cell, SuiteError, load_suite

linux_only = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")


def test_cpu_lists_parse_and_fold_as_linux_writes_them():
    assert parse_cpus("0") == (0,)
    assert parse_cpus("0-3,8, 2") == (0, 1, 2, 3, 8)
    assert format_cpus((0, 1, 2, 3, 8, 10, 11)) == "0-3,8,10-11"
    for bad in ("", "a", "3-1", "-1", "0,,1x"):
        with pytest.raises(PinError, match="pin"):
            parse_cpus(bad)


@linux_only
def test_a_pin_names_the_cpus_that_are_not_there():
    here = allowed_cpus()
    assert check_pin(format_cpus(here)) == here
    missing = max(here) + 1000
    with pytest.raises(PinError, match=f"no CPU {missing} here"):
        check_pin(f"0,{missing}")


def test_peak_rss_is_bytes():
    assert peak_rss_bytes() > 10 * 2**20  # a Python process with numpy holds more than 10 MiB, in bytes not KiB


def cli(*args):
    return subprocess.run([sys.executable, "-m", "chipbench.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=os.environ.copy())


@linux_only
def test_run_refuses_a_pin_on_cpus_that_do_not_exist_before_any_cell(tmp_path):
    proc = cli("run", "-w", "tiny-mlp", "-b", "ort-cpu", "--pin", "0-4095", "--results-dir", tmp_path / "res")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --pin 0-4095: no CPU") and "Traceback" not in proc.stderr
    assert not (tmp_path / "res" / "runs").exists() or not list((tmp_path / "res" / "runs").iterdir())
    proc = cli("run", "-w", "tiny-mlp", "-b", "ort-cpu", "--pin", "zero", "--results-dir", tmp_path / "res")
    assert proc.returncode == 2 and proc.stderr.startswith("error: --pin 'zero'")


def test_run_refuses_a_bad_quiet_threshold_in_the_environment(tmp_path):
    env = {**os.environ, "CHIPBENCH_QUIET_CORES": "-1"}
    proc = subprocess.run([sys.executable, "-m", "chipbench.cli", "run", "-w", "tiny-mlp", "-b", "ort-cpu",
                           "--results-dir", str(tmp_path)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: CHIPBENCH_QUIET_CORES='-1': must be >= 0"


@linux_only
def test_a_suite_pin_is_checked_naming_the_file(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text('[[cells]]\nworkload = "tiny-mlp"\nbackend = "ort-cpu"\npin = "0-4095"\n')
    with pytest.raises(SuiteError, match=r"s.toml: cells #1: pin 0-4095: no CPU"):
        load_suite(suite)
    suite.write_text('[[cells]]\nworkload = "tiny-mlp"\nbackend = "ort-cpu"\nquiet_cores = -0.5\n')
    with pytest.raises(SuiteError, match="quiet_cores must be >= 0"):
        load_suite(suite)


@linux_only
def test_a_real_cell_records_its_resources_pinned_and_threaded():
    from chipbench.runner import run_cell

    cpu = allowed_cpus()[0]
    # quiet_cores far above any machine's load: the figures are sampled and recorded, the verdict stays the backend's
    # 64 queries: what single-stream's p90 needs (chipbench.tails), however slow a busy machine makes them
    settings = MeasureSettings(warmup_count=2, warmup_s=0.0, min_count=64, min_duration_s=0.05, quiet_cores=4096.0)
    cell = Cell(workload="vibration-cnn1d", backend="ort-cpu", task_samples=16, threads=1, pin=str(cpu),
                settings=settings, timeout_s=300)
    rec = run_cell(cell)
    assert rec.status == "ok" and rec.verdict == "VALID", rec.reason
    validate(rec.to_dict())
    res = rec.resources
    assert res.affinity == {"cpus": str(cpu), "count": 1, "pin": str(cpu)}
    assert res.threads["requested"] == 1 and res.threads["backend"] == 1 and res.threads["process"] >= 1
    assert res.peak_rss_bytes > 50 * 2**20  # onnxruntime and numpy loaded
    assert res.cpu.cores == 1 and 0 < res.cpu.cpu_s and res.cpu.wall_s > 0
    assert 0 < res.cpu.cores_busy and res.cpu.utilisation == pytest.approx(res.cpu.cores_busy, abs=1e-3)
    assert res.load_s > 0 and res.first_inference_s > 0 and res.device_memory is None
    for when in ("start", "end"):
        sample = res.machine_load[when]
        assert 0 <= sample["others_cores"] <= sample["cores"] and sample["window_s"] > 0
    rules = {v["rule"]: v["passed"] for v in rec.validity}
    assert rules == {"accuracy-fidelity": True, "accuracy-task": True, "min-count-duration": True,
                     "machine-quiet": True, "machine-speed": True, "loadgen": True, "accuracy-timed-run": True,
                     "tail-estimate": True}
    # unpinned and quiet check off: every allowed CPU, and nothing sampled
    rec = run_cell(replace(cell, pin=None, threads=None, task_samples=0,
                           settings=replace(settings, quiet_cores=None)))
    assert rec.resources.affinity["cpus"] == format_cpus(allowed_cpus()) and rec.resources.affinity["pin"] is None
    assert rec.resources.machine_load is None and rec.verdict == "VALID"
