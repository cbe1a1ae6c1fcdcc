"""scripts/gpu_torch_check.py, rehearsed here: its plan, its summary and its way of importing
the checkout on a machine where chipbench is not installed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_torch_check.py"


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("gpu_torch_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dry_run(*args, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CHIPBENCH_PLUGINS"}
    return subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--results-dir", str(tmp_path / "r"), *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)


def test_dry_run_prints_the_chipbench_command_lines(tmp_path):
    proc = dry_run(tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if line.startswith(("probe", "cell", "report")))
    names = list(lines)
    assert names[0] == "probe" and names[-1] == "report" and len(names) == 2 + 6 * 2 * 2
    # backend by backend, batch by batch: a cut for time drops torch-compile at batch 32 first
    assert names[1] == "cell defect-cnn torch-eager-cuda b1" and names[-2] == "cell sensor-transformer torch-compile-cuda b32"
    one = lines["cell rul-tcn torch-eager-cuda b1"]
    assert "-m chipbench.cli run -w rul-tcn -b torch-eager-cuda --scenario single-stream" in one
    assert "--device cuda:0" in one and one.endswith("--timeout 300.0")
    assert "--scenario offline --batch 32" in lines["cell rul-tcn torch-compile-cuda b32"]
    preflight = json.loads(proc.stderr[proc.stderr.index("{"):])
    assert set(preflight["backends"]) == {"torch-eager-cuda", "torch-compile-cuda"}


def test_cpu_rehearsal_uses_the_cpu_twins(tmp_path):
    proc = dry_run("--device", "cpu", "--workloads", "vibration-cnn1d", "--batches", "32", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cells = [line for line in proc.stdout.splitlines() if line.startswith("cell ")]
    assert [c.split(":")[0] for c in cells] == ["cell vibration-cnn1d torch-eager b32",
                                                 "cell vibration-cnn1d torch-compile b32"]
    assert all("--device cpu" in c for c in cells)
    assert "unavailable here (their cells would be skipped): none" in proc.stdout


def test_unknown_names_and_bad_flags_exit_2(tmp_path):
    assert dry_run("--workloads", "no-such-workload", tmp_path=tmp_path).returncode == 2
    assert dry_run("--batches", "one", tmp_path=tmp_path).returncode == 2


def test_the_checkout_imports_in_place_where_chipbench_is_not_installed(check, tmp_path, monkeypatch):
    real = subprocess.run
    calls = []

    def first_probe_fails(argv, **kw):  # as on a bare GPU image: the first import check fails
        calls.append(argv)
        if len(calls) == 1:
            return subprocess.CompletedProcess(argv, 1, "", "ModuleNotFoundError: No module named 'chipbench'")
        return real(argv, **kw)

    monkeypatch.setattr(check.subprocess, "run", first_probe_fails)
    env, how = check.chipbench_env(tmp_path)
    assert how.startswith("checkout in place")
    shadow = tmp_path / "pkg" / "chipbench"
    assert (shadow / "backends").resolve() == check.ROOT / "backends"
    out = real([sys.executable, "-c", "import chipbench.backends.base as b, chipbench.record as r; "
                "print(b.__file__); print(r.schema()['title'])"],
               cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].startswith(str(shadow)) and out[1] == "chipbench RunRecord"


def test_summary_table_has_energy_where_measured(check, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    base = {"workload": {"name": "defect-cnn"}, "precision": "fp32", "scenario": {"name": "offline"}, "batch": 32,
            "status": "ok", "verdict": "VALID", "latency": {"median": 2.5}, "throughput": {"value": 12800.0},
            "reason": None, "created": "2026-01-01T00:00:00+00:00"}
    (runs / "a.json").write_text(json.dumps({**base, "backend": {"name": "torch-eager-cuda"},
                                             "energy": {"avg_watts": 350.0, "joules_per_inference": 0.0273}}))
    (runs / "b.json").write_text(json.dumps({**base, "backend": {"name": "torch-compile-cuda"}, "energy": None,
                                             "status": "failed", "verdict": None, "latency": None,
                                             "throughput": None, "reason": "compile: a|b"}))
    (runs / "c.json").write_text(json.dumps({**base, "backend": {"name": "ort-cpu"}}))  # not this check's
    records, table = check.summarize(tmp_path, ["torch-eager-cuda", "torch-compile-cuda"])
    assert len(records) == 2
    assert "| defect-cnn | torch-eager-cuda | fp32 | 32 | ok | VALID | 2.500 | 12800.0 | 350 | 0.0273 |  |" in table
    assert "| defect-cnn | torch-compile-cuda | fp32 | 32 | failed | – | – | – | – | – | compile: a/b |" in table
