"""int8 as a deployer would choose it, against fp32 and the previous fixed recipe, on ort-cpu.

For each default int8 workload: the int8 search (chipbench.int8_search, cached), then fp32, the
previous fixed recipe (QDQ s8/s8 per-channel) and the chosen configuration timed in one process
in round-robin rounds (chipbench.int8_search.quick_p50, 3 s each). The claim (issue: int8 at
least as fast as fp32 wherever a configuration passes the accuracy gate) is asserted; a
workload where none passes is reported as such. Run with `make bench` (marked slow: the
workloads train at first use)."""

import pytest

WORKLOADS = ["vibration-cnn1d", "edge-inspect", "sensor-transformer", "rul-tcn", "sensor-ae"]


@pytest.mark.slow
@pytest.mark.parametrize("workload", WORKLOADS)
def test_int8_chosen_against_fp32_and_the_old_recipe(benchmark, workload):
    from chipbench.cell import prepare
    from chipbench.int8_configs import CANDIDATES, OLD_RECIPE
    from chipbench.int8_gate import accuracy_gate_for
    from chipbench.int8_search import _session, quick_p50, search
    from chipbench.machine import usable_cores
    from chipbench.quantize import int8_model
    from chipbench.suite import Cell

    cell = Cell(workload=workload, backend="ort-cpu", precision="int8")
    prep = prepare(cell, 1)
    batches, key = prep.calibration
    onnx_path = prep.prepared.source.onnx_path
    threads = usable_cores()
    result = search(onnx_path, batches, dict(key), accuracy_gate_for(prep, cell.task_samples), threads)
    chosen = next(c for c in CANDIDATES if c.name == result.chosen)
    models = {"fp32": onnx_path, "old": int8_model(onnx_path, batches, dict(key), OLD_RECIPE),
              "chosen": int8_model(onnx_path, batches, dict(key), chosen)}
    sessions = {name: _session(path, threads) for name, path in models.items()}
    inputs = prep.prepared.inputs
    runs = {name: (lambda s=s: s.run(None, inputs)) for name, s in sessions.items()}
    benchmark.pedantic(runs["chosen"], rounds=200, iterations=1, warmup_rounds=10)
    p50 = {name: s * 1e3 for name, s in quick_p50(runs, budget_s=3.0, rounds=15).items()}
    benchmark.extra_info.update(chosen=result.chosen, passed_gate=result.passed, p50_ms=p50)
    print(f"\n{workload}: fp32 {p50['fp32']:.4f} ms, old {OLD_RECIPE.name} {p50['old']:.4f} ms, "
          f"chosen {result.chosen} {p50['chosen']:.4f} ms ({p50['fp32'] / p50['chosen']:.2f}x fp32); "
          f"{result.why}")
    if result.passed:
        assert p50["chosen"] <= p50["fp32"], result.why
