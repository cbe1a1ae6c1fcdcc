"""Compile here, run there, at what cost (vibration-cnn1d, ratios of medians on this machine).

- the bundle runner against the in-process harness, on the same cell (tvm-llvm, ort-cpu): both
  time `run(inputs)` with the host clock in `chipbench.scenarios.measure`, so the ratio is the
  runner's own overhead (runtime-only TVM / a bare ONNX Runtime session, records built apart);
- a tvm-llvm cell over RPC loopback against the same cell run locally: the RPC cell is timed by
  `time_evaluator` on the server (no network, no input copy, no output fetch inside a sample),
  the local one by the host clock around the whole query, so the ratio says what a board's
  own clock leaves out, not what the network costs.

Each pair runs alternately ROUNDS times (the machine's load drifts); the medians of the
per-run medians are compared. Skipped by `make test` (benchmarks disabled): `make bench`.
"""

import json
import subprocess
import sys
from dataclasses import replace
from statistics import median

import pytest

from chipbench.runner import run_cell
from chipbench.scenarios import MeasureSettings
from chipbench.suite import Cell

ROUNDS = 3
SETTINGS = MeasureSettings(warmup_count=20, min_count=300, min_duration_s=3.0)
WORKLOAD = "vibration-cnn1d"


def _enabled(benchmark):
    if benchmark.disabled:
        pytest.skip("a speed comparison: run it with `make bench`")


@pytest.mark.parametrize("backend", ["tvm-llvm", "ort-cpu"])
def test_bundle_runner_overhead_against_the_in_process_harness(benchmark, backend, tmp_path):
    _enabled(benchmark)
    from chipbench.bundle import make_bundle

    cell = Cell(WORKLOAD, backend, task_samples=0, settings=SETTINGS)
    make_bundle(cell, tmp_path / "bundle")

    def compare():
        harness, runner = [], []
        for i in range(ROUNDS):
            rec = run_cell(cell)
            assert rec.status == "ok", rec.reason
            harness.append(rec.latency.median)
            out = tmp_path / f"records-{i}.json"
            proc = subprocess.run([sys.executable, "-m", "chipbench.bundle_runner", str(tmp_path / "bundle"),
                                   "--out", str(out)], capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, proc.stderr
            runner.append(json.loads(out.read_text())["records"][0]["latency"]["median"])
        return harness, runner

    harness, runner = benchmark.pedantic(compare, rounds=1, iterations=1)
    ratio = median(runner) / median(harness)
    benchmark.extra_info.update(harness_median_ms=harness, runner_median_ms=runner, ratio=ratio)
    print(f"\n{WORKLOAD} × {backend}: in-process harness p50 {median(harness):.4f} ms {harness}, "
          f"bundle runner p50 {median(runner):.4f} ms {runner}: runner/harness = {ratio:.3f}")


def test_rpc_loopback_against_local(benchmark, tmp_path):
    _enabled(benchmark)
    from test_rpc import Started, free_port, serve

    port = free_port()
    tracker = Started("tracker", "--port", str(port), "--port-end", str(port + 1)).ready()
    servers = serve(tracker, "bench", 1)
    try:
        local = Cell(WORKLOAD, "tvm-llvm", task_samples=0, settings=SETTINGS)
        remote = replace(local, device=f"rpc://{tracker.address}/bench")

        def compare():
            here, there = [], []
            for _ in range(ROUNDS):
                for cell, into in ((local, here), (remote, there)):
                    rec = run_cell(cell)
                    assert rec.status == "ok" and rec.verdict == "VALID", rec.reason
                    into.append(rec.latency.median)
            return here, there

        here, there = benchmark.pedantic(compare, rounds=1, iterations=1)
    finally:
        for s in [*servers, tracker]:
            s.kill()
    ratio = median(there) / median(here)
    benchmark.extra_info.update(local_median_ms=here, rpc_median_ms=there, ratio=ratio)
    print(f"\n{WORKLOAD} × tvm-llvm: local (host clock) p50 {median(here):.4f} ms {here}, RPC loopback "
          f"(time_evaluator on the server) p50 {median(there):.4f} ms {there}: rpc/local = {ratio:.3f}")
