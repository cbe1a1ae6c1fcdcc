"""Device ceilings (probe) and the roofline built on them."""

from __future__ import annotations

import json

import pytest

from chipbench.probe import (
    DeviceProfile,
    Machine,
    has_native,
    load_profile,
    measure_ceilings,
    save_profile,
    theoretical_peaks,
)
from chipbench.roofline import Ceilings, benchmark_points, place, place_ops, plot, table

ZEN4 = Machine("AMD EPYC 9654 96-Core Processor", 2, "x86_64",
               ("avx", "avx2", "avx512_bf16", "avx512_vnni", "avx512f", "fma"), 2600.0, "AuthenticAMD", 25)


def test_theoretical_peaks():
    peaks, why = theoretical_peaks(ZEN4)
    assert peaks["fp32"] == pytest.approx(2 * 32 * 2.6)  # double-pumped AVX-512: 32 FLOP/cycle
    assert peaks["bf16"] == 2 * peaks["fp32"] and peaks["int8"] == 4 * peaks["fp32"]
    assert "double-pumped" in why
    intel = Machine("Xeon", 4, "x86_64", ("avx2", "avx512f", "fma"), 3000.0, "GenuineIntel", 6)
    assert theoretical_peaks(intel)[0] == {"fp32": pytest.approx(4 * 64 * 3.0)}
    avx2 = Machine("old", 1, "x86_64", ("avx", "avx2", "fma"), 1000.0)
    assert theoretical_peaks(avx2)[0]["fp32"] == pytest.approx(32.0)
    assert theoretical_peaks(Machine("?", 1, "arm", (), None))[0] == {}


def test_native_precisions_follow_isa_flags():
    assert has_native(ZEN4, "fp32") and has_native(ZEN4, "bf16") and has_native(ZEN4, "int8")
    assert not has_native(ZEN4, "fp16")  # Zen 4 has no AVX512-FP16
    assert ZEN4.key == "amd-epyc-9654-96-core-processor-2c"


def test_quick_ceilings_round_trip(tmp_path):
    profile = measure_ceilings(quick=True)
    assert profile.peak("fp32") > 0 and profile.bandwidth_gbps > 0
    assert profile.quick and profile.machine.cores >= 1
    assert set(profile.peak_gflops) | set(profile.details["skipped"]) == {"fp32", "bf16", "fp16", "int8"}
    assert DeviceProfile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile
    path = save_profile(profile, tmp_path)
    assert profile.key in path.name
    assert load_profile(tmp_path) == profile
    assert load_profile(tmp_path, ZEN4) is None  # another machine's key: nothing saved
    assert profile.details["reference_loop_s"] > 0  # the machine-speed rule's calibration (chipbench.speed)


def test_probe_if_missing_adds_the_speed_calibration_to_an_older_profile(tmp_path):
    import subprocess
    import sys

    profile = measure_ceilings(quick=True)
    del profile.details["reference_loop_s"]
    save_profile(profile, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "chipbench.cli", "probe", "--if-missing", "--results-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "calibration added" in " ".join(proc.stderr.split())
    again = load_profile(tmp_path)
    assert again.details["reference_loop_s"] > 0 and again.peak_gflops == profile.peak_gflops  # nothing re-measured


def test_roofline_placement():
    ceil = Ceilings(peak_gflops=200.0, bandwidth_gbps=20.0)
    assert ceil.ridge == 10.0
    gemm = place(ceil, "gemm", flops=2e9, nbytes=12e6, seconds=0.02)
    assert gemm.bound == "compute" and gemm.gflops == pytest.approx(100.0)
    assert gemm.bound_gflops == 200.0 and gemm.pct_of_roofline == pytest.approx(50.0)
    add = place(ceil, "add", flops=1e6, nbytes=12e6, seconds=1e-3)
    assert add.bound == "memory" and add.intensity == pytest.approx(1 / 12)
    assert add.bound_gflops == pytest.approx(20 / 12) and add.pct_of_roofline == pytest.approx(60.0)
    assert add.gbps == pytest.approx(12.0)


def test_place_ops_table_and_plot(tmp_path):
    profile = DeviceProfile(ZEN4, {"fp32": 160.0}, 16.0)
    ops = [
        {"name": "conv1", "op_type": "Conv", "time_us": 500.0, "flops": 4e7, "bytes": 1e6},
        {"name": "add", "op_type": "Add", "seconds": 1e-4, "flops": 1e5, "bytes": 1.2e6},
        {"name": "reshape", "op_type": "Reshape", "seconds": 0.0, "flops": 0, "bytes": 100},
    ]
    points = place_ops(profile, ops)
    assert [p.label for p in points] == ["conv1", "add"]  # zero-time ops are left out
    assert points[0].seconds == pytest.approx(5e-4) and points[0].bound == "compute"
    text = table(points, profile)
    assert text.splitlines()[0].startswith("Ceilings: 160.0 GFLOP/s, 16.0 GB/s")
    assert text.index("| conv1 |") < text.index("| add |")  # slowest first
    files = plot(profile, points, tmp_path / "roof", title="test")
    assert [f.suffix for f in files] == [".png", ".svg"] and all(f.stat().st_size > 1000 for f in files)
    assert "conv1" in files[1].read_text()  # points are labelled


def test_benchmark_points(tmp_path):
    bench = {"benchmarks": [
        {"name": f"test_kernel[gemm/x-{b}]", "group": "gemm/x", "stats": {"median": s},
         "extra_info": {"backend": b, "kernel": "gemm", "flops": 2e9, "bytes": 1e7}}
        for b, s in (("ort-cpu", 0.02), ("tir", 0.01))]}
    path = tmp_path / "kernels.json"
    path.write_text(json.dumps(bench))
    points = benchmark_points(Ceilings(200.0, 20.0), path)
    assert sorted(points) == ["ort-cpu", "tir"]
    assert points["tir"][0].label == "gemm/x" and points["tir"][0].gflops == pytest.approx(200.0)
