"""Co-design projection: exact roofline math on hand-built ops, the on-chip rule, the 2x what-ifs,
calibration, and one-line errors for bad hardware spec files."""

from __future__ import annotations

import pytest

from chipbench.opprofile import OpTime
from chipbench.project import (
    Calibration,
    HardwareSpec,
    HardwareSpecError,
    OpWork,
    builtin_specs,
    calibration_from_ops,
    load_spec,
    project,
    project_ops,
    render_markdown,
)

# 1 TFLOP/s fp32 (2 fp16), 100 GB/s, no on-chip memory: ridge 10 FLOP/B
CHIP = HardwareSpec("test-chip", "hand-built", {"fp32": 1.0, "fp16": 2.0}, bandwidth_gbps=100.0,
                    onchip_mib=0.0, clock_ghz=1.0, hypothetical=True)
COMPUTE = OpWork("gemm", "Gemm", flops=2e9, bytes=1e8)  # 2 ms compute, 1 ms memory
MEMORY = OpWork("add", "Add", flops=1e6, bytes=4e8)  # 1 us compute, 4 ms memory


def test_compute_and_memory_bound_exact():
    p = project_ops([COMPUTE, MEMORY], CHIP)
    gemm, add = p.ops
    assert (gemm.bound, gemm.time_s, gemm.compute_s, gemm.memory_s) == ("compute", pytest.approx(2e-3),
                                                                       pytest.approx(2e-3), pytest.approx(1e-3))
    assert (add.bound, add.time_s) == ("memory", pytest.approx(4e-3))
    assert p.total_s == pytest.approx(6e-3)
    assert p.total_dram_only_s == pytest.approx(6e-3)
    assert p.what_if["2x_bandwidth"] == pytest.approx(2e-3 + 2e-3)
    assert p.what_if["2x_compute"] == pytest.approx(1e-3 + 4e-3)  # gemm becomes balanced at 1 ms
    assert p.compute_bound_share == pytest.approx(2 / 6) and p.memory_bound_share == pytest.approx(4 / 6)
    assert p.binds == "memory"
    assert [o.name for o in p.binding(1)] == ["add"]
    assert p.ridge == pytest.approx(10.0)
    assert sum(o.share for o in p.ops) == pytest.approx(1.0)


def test_efficiency_and_precision_scale_exactly():
    p = project_ops([COMPUTE, MEMORY], CHIP, calibration=0.5)
    assert p.total_s == pytest.approx(12e-3) and p.calibration.factor == 0.5
    # fp16: twice the peak, half the bytes
    h = project_ops([COMPUTE, MEMORY], CHIP, precision="fp16")
    assert h.ops[0].time_s == pytest.approx(1e-3) and h.ops[0].bound == "compute"
    assert h.ops[1].time_s == pytest.approx(2e-3) and h.ops[1].bytes == pytest.approx(2e8)


def test_onchip_working_set_keeps_activations_on_chip():
    chip = HardwareSpec("sram", "x", {"fp32": 1.0}, bandwidth_gbps=1.0, onchip_mib=1.0, clock_ghz=1.0)
    fits = OpWork("conv", "Conv", flops=1e6, bytes=2**19, weight_bytes=2**16)  # 0.5 MiB, 64 KiB weights
    big = OpWork("big", "Conv", flops=1e6, bytes=2**21, weight_bytes=2**16)  # 2 MiB: streams
    view = OpWork("flat", "Flatten", flops=0, bytes=2**20)
    p = project_ops([fits, big, view], chip)
    a, b, v = p.ops
    assert a.fits_onchip and a.dram_bytes == 2**16 and a.time_s == pytest.approx(2**16 / 1e9)
    assert not b.fits_onchip and b.dram_bytes == 2**21 and b.time_s == pytest.approx(2**21 / 1e9)
    assert v.bound == "free" and v.time_s == 0
    assert p.total_dram_only_s == pytest.approx((2**19 + 2**21) / 1e9)


def test_calibration_from_measured_ops():
    # three 1 ms ops at 10%, 20%, 60% of a 10 GFLOP/s bound: roofline times 0.1, 0.2, 0.6 ms
    ops = [OpTime("ort-cpu", f"n{i}", "Conv", 1.0, flops=pct / 100 * 1e7, bound_gflops=10.0,
                  pct_of_roofline=pct) for i, pct in enumerate((10.0, 20.0, 60.0))]
    ops.append(OpTime("ort-cpu", "r", "Reshape", 1.0, flops=0.0))  # no FLOPs: left out
    cal = calibration_from_ops(ops, "ort-cpu")
    assert cal.factor == pytest.approx(0.9e-3 / 3e-3) and cal.n_ops == 3
    assert cal.median == pytest.approx(0.2) and cal.aggregate == pytest.approx(0.3)
    assert calibration_from_ops(ops, method="median").factor == pytest.approx(0.2)
    assert calibration_from_ops([]).factor == 1.0
    assert project_ops([COMPUTE], CHIP, calibration=cal).total_s == pytest.approx(2e-3 / 0.3)
    over = calibration_from_ops([OpTime("x", "a", "Conv", 1.0, flops=1.5e6, bound_gflops=1.0, pct_of_roofline=150.0)])
    assert over.factor == 1.0 and "clamped" in over.source


GOOD = """name = "t"
description = "test"
hypothetical = true
clock_ghz = 1.0
bandwidth_gbps = 10
onchip_mib = 2
[peak_tflops]
fp32 = 1.0
"""


@pytest.mark.parametrize("text, key", [
    (GOOD.replace("bandwidth_gbps = 10\n", ""), "bandwidth_gbps"),
    (GOOD.replace("bandwidth_gbps = 10", 'bandwidth_gbps = "fast"'), "bandwidth_gbps"),
    (GOOD.replace("onchip_mib = 2", "onchip_mib = -1"), "onchip_mib"),
    (GOOD.replace("fp32 = 1.0", "fp8 = 1.0"), "peak_tflops.fp8"),
    (GOOD.replace("fp32 = 1.0", "fp32 = 0"), "peak_tflops.fp32"),
    (GOOD + "bandwith = 3\n", "bandwith"),
    (GOOD.replace("hypothetical = true", 'hypothetical = "yes"'), "hypothetical"),
    (GOOD.replace('name = "t"', "name = "), "invalid TOML"),
])
def test_bad_spec_is_one_line_naming_file_and_key(tmp_path, text, key):
    path = tmp_path / "chip.toml"
    path.write_text(text)
    with pytest.raises(HardwareSpecError) as err:
        load_spec(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and key in msg, msg


def test_unsupported_precision_names_it(tmp_path):
    path = tmp_path / "chip.toml"
    path.write_text(GOOD)
    spec = load_spec(path)
    with pytest.raises(HardwareSpecError, match="no 'int8' peak"):
        project_ops([COMPUTE], spec, precision="int8")


def test_shipped_specs_load_and_say_hypothetical():
    specs = [load_spec(p) for p in builtin_specs()]
    assert len(specs) >= 3
    for s in specs:
        assert s.hypothetical and "HYPOTHETICAL" in s.description
        assert set(s.peak_tflops) <= {"fp32", "fp16", "bf16", "int8"}


def test_project_workload_end_to_end():
    p = project("tiny-mlp", "edge-npu", precision="int8", batch=2,
                calibration=Calibration(0.5, "test"))
    assert p.total_s > 0 and p.ops and p.calibration.factor == 0.5
    assert p.what_if["2x_bandwidth"] <= p.total_s and p.what_if["2x_compute"] <= p.total_s
    text = render_markdown(p, top=3)
    assert "HYPOTHETICAL" in text and "2x bandwidth" in text and "tiny-mlp" in text
    assert p.to_dict()["binds"] in ("memory", "compute", "balanced")
