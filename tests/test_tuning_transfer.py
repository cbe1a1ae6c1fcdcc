"""Transferred tuning databases (chipbench.tuning.transfer): ranking of candidate targets,
the tuned backend using another target's database of the same graph, the record's `tuning`
provenance, --no-transfer, records dropped, and `chipbench tune` seeded from a transfer.

The database is made in the test without a search: one record per task of the small
two-layer model (tests/test_tuning.py), the first schedule of the task's design space (what a
search starts from; MetaSchedule ignores a record with an empty trace), keyed to this
machine's target. "Another machine" is another target string
(haswell: AVX2 only, so the code still runs on this Zen 4 and can be checked against the
reference).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from chipbench.tuning.transfer import TargetTraits, closeness, rank, same_kind, target_from_text, vector_bits_of, vendor_of

needs_tvm = pytest.mark.skipif(importlib.util.find_spec("tvm") is None, reason="apache-tvm not installed")

HASWELL = '{"kind": "llvm", "mcpu": "haswell", "num-cores": 2}'


def traits(mcpu: str, features: set[str], cores: int | None = 2, arch: str = "x86_64") -> TargetTraits:
    return TargetTraits("llvm", arch, mcpu, vendor_of(mcpu), frozenset(features), vector_bits_of(features), cores)


AVX2 = {"sse2", "avx", "avx2", "fma"}
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}


def test_candidates_rank_by_vendor_then_isa_then_vector_width_then_cores():
    want = traits("sapphirerapids", AVX512 | {"avx512vnni", "amx-tile", "avx512bf16"})
    znver4 = traits("znver4", AVX512 | {"avx512vnni", "avx512bf16"})
    skx = traits("skylake-avx512", AVX512)
    hsw = traits("haswell", AVX2)
    arm = traits("neoverse-v1", {"neon", "sve"}, arch="aarch64")
    order = [name for name, _ in rank(want, [("znver4", znver4), ("haswell", hsw), ("arm", arm), ("skx", skx)])]
    assert order == ["skx", "haswell", "znver4"]  # the vendor first; another architecture is no candidate
    assert not same_kind(want, arm)
    # same vendor: the one with more ISA extensions in common, then the same vector width
    amd = traits("znver3", AVX2)
    assert [n for n, _ in rank(traits("znver4", AVX512), [("znver3", amd), ("znver4-1c", traits("znver4", AVX512, 1))])] \
        == ["znver4-1c", "znver3"]
    # another thread count of the same CPU: the nearest core count first
    want4 = traits("znver4", AVX512, cores=4)
    near = [n for n, _ in rank(want4, [("1c", traits("znver4", AVX512, 1)), ("2c", traits("znver4", AVX512, 2))])]
    assert near == ["2c", "1c"]
    assert closeness(want4, traits("znver4", AVX512, 4)) > closeness(want4, traits("znver4", AVX512, 2))


def test_target_traits_helpers():
    assert (vendor_of("znver4"), vendor_of("sapphirerapids"), vendor_of("x86-64-v3")) == ("AMD", "Intel", "generic")
    assert (vector_bits_of(AVX512), vector_bits_of(AVX2), vector_bits_of({"sse2"})) == (512, 256, 128)
    assert target_from_text("llvm -mcpu=haswell -num-cores=2") == {"kind": "llvm", "mcpu": "haswell", "num-cores": 2}
    assert target_from_text(HASWELL)["mcpu"] == "haswell"
    assert traits("znver4", AVX512).label() == "llvm -mcpu=znver4 -num-cores=2"
    for bad in ("-mcpu=haswell", "llvm mcpu", '{"mcpu": "x"}'):
        with pytest.raises(ValueError):
            target_from_text(bad)


# --------------------------------------------------------------------------- with TVM

def make_database(onnx_path: Path, root: Path) -> Path:
    """A database for this machine's target: every task of the model with one record (its
    unscheduled function), as tune_onnx lays it out (key.json beside the records)."""
    from tvm.s_tir import meta_schedule as ms

    from chipbench import tuning
    from chipbench.backends.tvm import fuse, host_target, import_onnx

    target = host_target()
    key = tuning.database_key(tuning.graph_sha256(onnx_path), str(target), True)
    folder = tuning.database_folder(root, key, "two")
    folder.mkdir(parents=True)
    (folder / tuning.KEY_FILE).write_text(json.dumps(key))
    database = ms.database.JSONDatabase(work_dir=str(folder), module_equality="structural")
    tuning.load_cpu_intrinsics()
    for task in tuning.extract(fuse(import_onnx(onnx_path)[0], target, True), target):
        mod = task.dispatched[0]
        context = ms.TuneContext(mod=mod, target=target, space_generator="post-order-apply",
                                 search_strategy="replay-trace", task_name=task.task_name)
        sch = context.generate_design_space()[0]  # what the search starts from; the time is not used
        database.commit_tuning_record(ms.database.TuningRecord(
            sch.trace, database.commit_workload(mod), [1e-6], target, ms.arg_info.ArgInfo.from_prim_func(mod["main"])))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.test_tuning import two_layer

    root = tmp_path_factory.mktemp("xfer")
    model = two_layer(root / "two.onnx")
    folder = make_database(model, root / "db")
    return model, root / "db", folder


def source_of(model: Path):
    from chipbench.backends.base import ModelSource

    return ModelSource("two", model, ("x",), ("y",))


@needs_tvm
def test_another_target_uses_the_transferred_database_and_says_so(tiny, monkeypatch, tmp_path):
    from chipbench import tuning
    from chipbench.backends.base import CompileSpec, get_backend
    from tests.test_tuning import reference

    monkeypatch.setenv("CHIPBENCH_CACHE", str(tmp_path / "cache"))
    model, root, folder = tiny
    compiled = get_backend("tvm-llvm-tuned").compile(source_of(model), CompileSpec(tuning_db=root, target=HASWELL))
    x = tuning.onnx_inputs(model)["x"]
    np.testing.assert_allclose(compiled.run({"x": x})["y"], reference(model, x), rtol=1e-4, atol=1e-4)
    t = compiled.details["tuning"]
    source_key = json.loads((folder / "key.json").read_text())
    assert t["provenance"] == "transferred" and t["source_key"] == source_key
    assert t["source_slug"] == folder.parent.name and t["source_target"].startswith("llvm -mcpu=")
    assert t["records_dropped"] == 0 and t["records_kept"] == tuning.record_count(folder) and t["tasks_default"] == 0
    assert "transferred from " + folder.parent.name in compiled.pipeline
    assert compiled.details["tasks_applied"] == compiled.details["tasks_found"] == 2
    # never written back as if tuned here: nothing is keyed to haswell, in the roots or the cache
    sha = source_key["graph_sha256"]
    haswell = tuning.canonical_target(HASWELL)
    assert tuning.find_database(sha, haswell, [root, tmp_path / "cache"]) is None
    assert not list((tmp_path / "cache").rglob("key.json"))
    # the exact database stays "tuned here"
    exact = get_backend("tvm-llvm-tuned").compile(source_of(model), CompileSpec(tuning_db=root))
    assert exact.details["tuning"]["provenance"] == "tuned-here" and exact.details["tuning"]["records_dropped"] == 0


@needs_tvm
def test_no_transfer_keeps_the_exact_key_rule(tiny, tmp_path, monkeypatch):
    from chipbench.backends.base import CompileSpec, Unsupported, get_backend

    monkeypatch.setenv("CHIPBENCH_CACHE", str(tmp_path / "cache"))
    model, root, folder = tiny
    backend = get_backend("tvm-llvm-tuned")
    with pytest.raises(Unsupported, match="no tuning database .*--no-transfer"):
        backend.compile(source_of(model), CompileSpec(tuning_db=root, target=HASWELL, options={"no_transfer": True}))
    with pytest.raises(Unsupported, match="was made for .*--no-transfer"):
        backend.compile(source_of(model), CompileSpec(tuning_db=folder, target=HASWELL, options={"no_transfer": True}))
    # the database folder named outright transfers when allowed
    compiled = backend.compile(source_of(model), CompileSpec(tuning_db=folder, target=HASWELL))
    assert compiled.details["tuning"]["provenance"] == "transferred"


@needs_tvm
def test_records_this_cpu_cannot_build_are_dropped_and_counted(tiny, tmp_path, monkeypatch):
    """A record that tensorizes with VNNI (which haswell lacks) is dropped, and its task keeps the
    default schedule. The records here have no tensorize step, so the trace reader is made to
    report one for one of them; the check, the drop and the counts are the real ones."""
    from chipbench.backends.base import CompileSpec, get_backend
    from chipbench.tuning import transfer

    monkeypatch.setenv("CHIPBENCH_CACHE", str(tmp_path / "cache"))
    model, root, _ = tiny
    real = transfer.record_intrinsics
    seen: list = []

    def one_uses_vnni(record):
        seen.append(record)
        return ["dot_16x4_vnni"] if len(seen) == 1 else real(record)

    monkeypatch.setattr(transfer, "record_intrinsics", one_uses_vnni)
    compiled = get_backend("tvm-llvm-tuned").compile(source_of(model), CompileSpec(tuning_db=root, target=HASWELL))
    t = compiled.details["tuning"]
    assert t["records_dropped"] == 1 and t["records_kept"] == 1 and t["tasks_default"] == 1
    (reason,) = t["dropped_reasons"]
    assert "dot_16x4_vnni needs avx512f, avx512vnni" in reason
    assert compiled.details["tasks_applied"] == 1
    # an intrinsic we cannot check is dropped too; one the target has is kept
    from tvm.target import Target

    record = seen[0]
    monkeypatch.setattr(transfer, "record_intrinsics", lambda r: ["dot_64x_mystery"])
    assert "can be checked" in transfer.check_record(record, Target(HASWELL), frozenset())[0]
    monkeypatch.setattr(transfer, "record_intrinsics", lambda r: ["dot_16x4_vnni"])
    znver4 = '{"kind": "llvm", "mcpu": "znver4", "num-cores": 2}'
    assert transfer.check_record(record, Target(znver4), transfer.traits_of(znver4).features)[0] is None


@needs_tvm
def test_the_record_carries_the_provenance_and_no_transfer_gives_the_reason(tiny, tmp_path, monkeypatch):
    from chipbench.cell import execute
    from chipbench.record import validate
    from chipbench.scenarios import MeasureSettings
    from chipbench.suite import Cell, SuiteError, check_cell

    monkeypatch.setenv("CHIPBENCH_CACHE", str(tmp_path / "cache"))
    model, root, folder = tiny
    quick = MeasureSettings(warmup_count=1, warmup_s=0.0, min_count=5, min_duration_s=0.0)
    cell = Cell(workload="two", backend="tvm-llvm-tuned", model=str(model), tuning_db=str(root), target=HASWELL,
                settings=quick)
    record = execute(cell)
    assert record.status == "ok", record.reason
    validate(json.loads(record.to_json()))
    assert record.tuning["provenance"] == "transferred" and record.tuning["source_slug"] == folder.parent.name
    assert "tuning" not in record.backend["details"]
    from chipbench.report import tuning_cells
    from chipbench.tuning_curves import tuning_rows

    (row,) = tuning_rows([record])
    assert tuning_cells(row)["schedules"] == f"transferred from {folder.parent.name}"
    refused = execute(Cell(**{**cell.__dict__, "no_transfer": True}))
    assert refused.status == "unsupported" and "--no-transfer" in refused.reason and refused.tuning is None
    validate(json.loads(refused.to_json()))
    # a cell without the option keeps the configuration (and cell key) it had before the option
    assert "no_transfer" not in cell.to_dict() and Cell.from_dict(cell.to_dict()) == cell
    with pytest.raises(SuiteError, match="no_transfer must be true or false"):
        check_cell(Cell(workload="w", backend="b", no_transfer="yes"))


@needs_tvm
def test_the_host_target_can_be_overridden(monkeypatch):
    from chipbench.backends.tvm import host_target

    monkeypatch.setenv("CHIPBENCH_TVM_TARGET", "llvm -mcpu=haswell")
    target = host_target(3)
    assert target.attrs["mcpu"] == "haswell" and int(target.attrs["num-cores"]) == 3
    monkeypatch.setenv("CHIPBENCH_TVM_TARGET", "-mcpu=haswell")
    with pytest.raises(ValueError, match="give a kind first"):
        host_target()


@needs_tvm
@pytest.mark.slow
def test_tune_starts_from_a_transferred_database(tiny, tmp_path, monkeypatch):
    """`chipbench tune` for haswell: the znver4 (host) records are re-measured here and seed the
    search; the new database is keyed to haswell and says it was seeded."""
    from chipbench import tuning
    from tests.test_tuning import FAST

    monkeypatch.setenv("CHIPBENCH_CACHE", str(tmp_path / "cache"))
    model, root, folder = tiny
    result = tuning.tune_onnx(model, 4, tmp_path, target=HASWELL, root=root, **FAST)
    assert result.key["target"] == tuning.canonical_target(HASWELL) and result.folder.parent != folder.parent
    meta = tuning.read_meta(result.folder)
    assert meta["seeded_from"]["source_slug"] == folder.parent.name and meta["seeded_from"]["records_seeded"] == 2
    assert result.trials >= 4 and any("seeded from" in n for n in result.notes)
    from chipbench.backends.base import CompileSpec, get_backend

    compiled = get_backend("tvm-llvm-tuned").compile(source_of(model), CompileSpec(tuning_db=root, target=HASWELL))
    t = compiled.details["tuning"]
    assert t["provenance"] == "tuned-here" and t["seeded_from"]["source_slug"] == folder.parent.name


@needs_tvm
def test_list_says_which_database_this_cpu_uses(tiny):
    from chipbench import tuning
    from chipbench.backends.tvm import host_target
    from chipbench.tuning.listing import database_rows

    model, root, folder = tiny
    (plain,) = database_rows(roots=[root])
    assert plain["target"] == folder.parent.name and plain["records"] == 2 and "here" not in plain
    (row,) = database_rows(tuning.canonical_target(HASWELL), roots=[root])
    assert row["here"] == f"transferred from {folder.parent.name}"
    (row,) = database_rows(str(host_target()), roots=[root])
    assert row["here"] == "tuned here"
