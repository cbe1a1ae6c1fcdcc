"""Per-op breakdowns on the tiny-mlp double: ORT's profiler rows name real op types and account
for every ONNX FLOP; TVM's per-PrimFunc rows carry Relax op names and TIR FLOP counts. No timing
thresholds: only structure (positive times, per-op sums inside the end-to-end order of magnitude)."""

from __future__ import annotations

import pytest

from chipbench import opprofile
from chipbench.backends.base import CompileSpec, get_backend
from chipbench.backends.tvm_profile import tvm_op_types
from chipbench.opprofile import OpProfile, OpTime, markdown_table, render_markdown
from chipbench.prepare import prepare_workload
from chipbench.roofline import Ceilings
from chipbench.workloads.base import get_workload

BATCH = 2
FEATURES, HIDDEN, CLASSES = 16, 32, 4  # tests/doubles.py TinyMlp defaults


def compiled_profile(backend: str, runs: int, **spec) -> OpProfile:
    """The backend's own `Compiled.profile` of tiny-mlp at BATCH, in this process."""
    prepared = prepare_workload(get_workload("tiny-mlp"), BATCH, 0)
    compiled = get_backend(backend).compile(prepared.source, CompileSpec(batch=BATCH, **spec))
    prof = compiled.profile(prepared.inputs, runs)
    prof.workload, prof.batch = "tiny-mlp", BATCH
    return prof


@pytest.fixture(scope="module")
def ort_profile():
    prof = compiled_profile("ort-cpu", 5)
    opprofile.attach_roofline(prof, Ceilings(peak_gflops=100.0, bandwidth_gbps=20.0))
    return prof


@pytest.fixture(scope="module")
def tvm_profile():
    return compiled_profile("tvm-llvm", 3)


def _onnx_totals():
    from chipbench.kernels.onnx_flops import node_costs, totals
    from chipbench.prepare import export_onnx
    from chipbench.workloads.base import get_workload

    return totals(node_costs(export_onnx(get_workload("tiny-mlp"), BATCH)))


def test_ort_rows_are_what_ran_and_cover_every_flop(ort_profile):
    ops = ort_profile.ops
    assert ops and all(o.backend == "ort-cpu" and o.time_ms > 0 for o in ops)
    kinds = {o.op_type for o in ops}
    assert kinds & {"Gemm", "FusedGemm", "MatMul", "FusedMatMul"}, kinds
    covered = {t for o in ops for t in o.onnx_op_types}
    assert "Gemm" in covered and "LayerNormalization" in covered, covered
    # every ONNX node with FLOPs lands in exactly one row
    assert sum(o.flops or 0 for o in ops) == pytest.approx(_onnx_totals()["flops"])
    names = [n for o in ops for n in o.covers]
    assert len(names) == len(set(names))


def test_ort_rows_sum_to_about_end_to_end(ort_profile):
    total = sum(o.time_ms for o in ort_profile.ops)
    assert ort_profile.e2e_ms > 0
    assert 0 < total <= 1.5 * ort_profile.e2e_ms
    assert sum(o.share for o in ort_profile.ops) == pytest.approx(1.0)
    assert [o.time_ms for o in ort_profile.ops] == sorted((o.time_ms for o in ort_profile.ops), reverse=True)


def test_ort_rows_on_the_roofline(ort_profile):
    placed = [o for o in ort_profile.ops if o.pct_of_roofline is not None]
    assert placed
    for o in placed:
        ai = o.flops / o.bytes
        assert o.intensity == pytest.approx(ai)
        assert o.bound_gflops == pytest.approx(min(100.0, 20.0 * ai))
        assert o.bound == ("compute" if ai >= 5.0 else "memory")
        assert o.pct_of_roofline == pytest.approx(100 * o.gflops / o.bound_gflops)
    assert ort_profile.ceilings["ridge"] == pytest.approx(5.0)
    points = opprofile.roofline_points(ort_profile, Ceilings(100.0, 20.0))
    assert [p.label for p in points] == [o.name for o in placed]
    assert [p.pct_of_roofline for p in points] == pytest.approx([o.pct_of_roofline for o in placed])


def test_tvm_rows_carry_relax_ops_and_tir_flops(tvm_profile):
    ops = tvm_profile.ops
    assert ops and all(o.backend == "tvm-llvm" and o.time_ms > 0 and o.bytes > 0 for o in ops)
    matmuls = [o for o in ops if "matmul" in o.op_type.split("+")]
    assert matmuls, [o.op_type for o in ops]
    # TIR counts a multiply-add as 2 FLOPs: the two Linear layers' products, exactly
    products = {2 * BATCH * FEATURES * HIDDEN, 2 * BATCH * HIDDEN * CLASSES}
    assert {o.flops for o in matmuls} == products
    assert all(o.flops_source == "tir" for o in ops if o.flops is not None)
    assert tvm_profile.e2e_ms > 0 and sum(o.share for o in ops) == pytest.approx(1.0)


def test_tvm_symbol_names_to_op_types():
    assert tvm_op_types("fused_conv1d1_add1_relu1") == ["conv1d", "add", "relu"]
    assert tvm_op_types("fused_conv2d_add_relu") == ["conv2d", "add", "relu"]
    assert tvm_op_types("max_pool1d3") == ["max_pool1d"]
    assert tvm_op_types("fused_conv2d6_add5_relu31_prepacked") == ["conv2d", "add", "relu"]
    assert tvm_op_types("layer_norm2") == ["layer_norm"]
    assert tvm_op_types("matmul") == ["matmul"]
    assert tvm_op_types("fused_matmul1_add6") == ["matmul", "add"]


def test_markdown_top_k(ort_profile):
    table = markdown_table(ort_profile.ops, top=2)
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 2 + (1 if len(ort_profile.ops) > 2 else 0)  # header, top 2, "more"
    text = render_markdown(ort_profile, top=3)
    assert "tiny-mlp on ort-cpu" in text and "Roofline:" in text
    assert ort_profile.to_dict()["ops"][0]["name"] == ort_profile.ops[0].name


def test_attach_roofline_leaves_flopless_ops_unplaced():
    ops = [OpTime("x", "a", "Conv", 1.0, flops=2e6, bytes=1e6), OpTime("x", "b", "Reshape", 1.0, flops=0.0, bytes=1e3)]
    opprofile.attach_roofline(ops, Ceilings(10.0, 1.0))
    # 2 FLOP/B < ridge 10: memory-bound, attainable 2 GFLOP/s, achieved 2e6 FLOP in 1 ms = 2 GFLOP/s
    assert ops[0].bound == "memory" and ops[0].bound_gflops == pytest.approx(2.0)
    assert ops[0].pct_of_roofline == pytest.approx(100.0)
    assert ops[1].bound == "memory" and ops[1].pct_of_roofline is None


def test_a_profile_survives_its_record():
    prof = OpProfile("w", "b", 1, 3, 2, 1.5, [OpTime("b", "n", "Conv", 1.0, flops=2.0, covers=("c",))], "m")
    again = OpProfile.from_dict(prof.to_dict())
    assert again == prof and again.ops[0].covers == ("c",)


def test_profile_cells_are_stored_and_a_backend_without_a_profiler_says_so(tmp_path):
    from chipbench.profiling import profile_cell, profile_of, take_profile
    from chipbench.store import ResultsStore

    store = ResultsStore(tmp_path)
    prof = take_profile(profile_cell("tiny-mlp", "ort-cpu", batch=BATCH, runs=3), store)
    assert prof.backend == "ort-cpu" and prof.batch == BATCH and prof.ops
    (record,) = store.records()
    assert record.kind == "profile" and record.verdict == "VALID" and record.latency is None
    with pytest.raises(opprofile.OpProfileError, match="offers no per-operator profile"):
        take_profile(profile_cell("tiny-mlp", "torch-eager", runs=3), store)
    assert [r.status for r in store.records()] == ["ok", "unsupported"]
    assert profile_of(store.records()[0]).ops[0].name == prof.ops[0].name


@pytest.mark.slow
def test_tuned_tvm_rows_are_fused_primfuncs(tmp_path):
    from chipbench.backends.base import Unsupported
    from chipbench.tuning import tune

    tune("tiny-mlp", 4, tmp_path, kind="workload", batch=BATCH, strategy="replay-trace", cost_model="random",
         trials_per_iter=4, measure_s=0.05, log=lambda msg: None)
    prof = compiled_profile("tvm-llvm-tuned", 3, tuning_db=tmp_path / "tuning")
    assert prof.backend == "tvm-llvm-tuned" and "metaschedule" in prof.method
    assert any(o.name.startswith("fused_") and "matmul" in o.op_type for o in prof.ops)
    with pytest.raises(Unsupported, match="no tuning database"):
        prepared = prepare_workload(get_workload("tiny-mlp"), BATCH + 1, 0)
        get_backend("tvm-llvm-tuned").compile(prepared.source, CompileSpec(batch=BATCH + 1, tuning_db=tmp_path / "tuning"))
