"""One report holding records from several devices: every table names its device, figures
from different devices never share a table, and measured energy is shown."""

from chipbench.cell import base_record
from chipbench.report import build_tables, precision_rows, render
from chipbench.stats import LatencyStats
from chipbench.suite import Cell

DEVICES = {
    "cpu": {"kind": "cpu", "id": "cpu", "name": "AMD EPYC"},
    "cuda:0": {"kind": "cuda", "id": "cuda:0", "name": "NVIDIA H200"},
    "rpc://127.0.0.1:9190/board": {"kind": "rpc", "id": "rpc://127.0.0.1:9190/board", "name": "rk3588"},
}


def measured(backend, device, precision="fp32", ms=1.0, energy=None):
    latency = LatencyStats.from_samples([ms / 1e3] * 5).to_dict()
    return base_record(Cell(workload="vibration-cnn1d", backend=backend, precision=precision, device=device),
                       "ok", latency=latency, throughput={"value": 1e3 / ms, "unit": "samples/s"},
                       accuracy={"fidelity": {"max_abs": 0.0, "rel_l2": 0.0, "cosine": 1.0}, "tolerance": {},
                                 "failures": [], "task": None},
                       verdict="VALID", provenance={"device": DEVICES[device]}, energy=energy,
                       compile={"seconds": 1.0, "artifact_bytes": 1024})


def test_tables_are_per_device_and_name_it():
    records = [measured("ort-cpu", "cpu"), measured("tvm-cuda", "cuda:0", ms=0.2),
               measured("tvm-llvm", "rpc://127.0.0.1:9190/board", ms=3.0)]
    tables = build_tables(records)
    assert sorted(t.device for t in tables) == ["cpu (AMD EPYC)", "cuda:0 (NVIDIA H200)",
                                                "rpc://127.0.0.1:9190/board (rk3588)"]
    assert all(len(t.backends) == 1 for t in tables)
    md = render(records, "md")
    assert "## single-stream, fp32 (batch 1) on cuda:0 \\(NVIDIA H200\\)" in md  # Markdown-escaped


def test_precision_speedups_are_taken_within_one_device():
    records = [measured("tvm-cuda", "cuda:0", "fp32", ms=1.0), measured("tvm-cuda", "cpu", "fp16", ms=0.5)]
    assert precision_rows(records) == []  # fp32 on one device, fp16 on another: no ratio
    same = [measured("tvm-cuda", "cuda:0", "fp32", ms=1.0), measured("tvm-cuda", "cuda:0", "fp16", ms=0.5)]
    assert [round(r.speedup or 0, 3) for r in precision_rows(same)] == [1.0, 2.0]


def test_measured_energy_is_shown_per_run():
    energy = {"joules": 12.0, "seconds": 1.5, "avg_watts": 8.0, "samples": 70, "method": "counter",
              "interval_s": 0.02, "device": "cuda:0", "queries": 600, "inferences": 600,
              "joules_per_inference": 0.02}
    md = render([measured("torch-eager-cuda", "cuda:0", energy=energy), measured("ort-cpu", "cpu")], "md")
    assert "0.02 J, 8 W" in md
