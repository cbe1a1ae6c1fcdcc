"""tvm-cuda: cross-compiles real sm_90 machine code on a host without a GPU, says why it cannot
run here, and (marked gpu) runs VALID on a real one.

Cross-compilation needs nvcc and a C compiler (for the driver stub); without them those tests
skip with the reason. Workloads use seeded weights (train=False): the compiled code is the
same whatever the weight values, and training is not what is under test.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from chipbench.backends.base import CompileSpec, compile_capability, get_backend
from chipbench.backends.tvm_cuda import TvmCuda, find_nvcc
from chipbench.gpu import cuda_present
from chipbench.cudabin import cubin_arch, device_images, library_archs

CAN_COMPILE, WHY_NOT = TvmCuda().can_compile()
needs_compiler = pytest.mark.skipif(not CAN_COMPILE, reason=f"cannot cross-compile for CUDA here: {WHY_NOT}")
needs_nvcc = pytest.mark.skipif(find_nvcc() is None, reason="nvcc not found")
no_gpu_here = pytest.mark.skipif(cuda_present(), reason="this host has a GPU")
SM90 = '{"kind": "cuda", "arch": "sm_90"}'


def prepared(name):
    from chipbench.prepare import prepare_workload
    from chipbench.workloads.base import get_workload

    return prepare_workload(get_workload(name, train=False), 1, 0)


def export(build, folder: Path) -> Path:
    path = folder / "model.so"
    build.exe.export_library(str(path))
    return path


@needs_compiler
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("workload", ["vibration-cnn1d", "sensor-transformer"])
def test_cross_compiled_library_holds_sm90_machine_code(workload, precision, tmp_path):
    from chipbench.backends.tvm_cuda import compile_for

    build = compile_for(prepared(workload).source, CompileSpec(precision=precision, target=SM90))
    path = export(build, tmp_path)
    images = device_images(path.read_bytes())
    # machine code for sm_90 only, as the fatbin entries and each cubin's own ELF header say
    assert images and all(i.kind == "elf" and i.arch == 90 and i.elf_arch == 90 for i in images), images
    assert library_archs(path) == ["sm_90"]
    assert b"__global__" not in path.read_bytes()  # no CUDA source left for the device to compile
    assert build.target.attrs["arch"] == "sm_90" and build.details["cuda_compiler"].startswith("nvcc")
    assert ("fp16" in build.pipeline) == (precision == "fp16")
    assert len(build.weights) > 0  # weights stay parameters, not baked into the library
    if precision == "fp16":
        assert {str(w.dtype) for w in build.weights} == {"float16"}


@needs_compiler
@no_gpu_here
def test_stub_is_what_lets_tvm_load_its_cuda_module_here():
    """Without a driver TVM's CUDA runtime module does not load (so TVM would embed CUDA source);
    with the stub on the library path of a child process, it does."""
    from chipbench.cuda_stub import subprocess_env

    code = 'import tvm; print(tvm.get_global_func("ffi.Module.create.cuda", allow_missing=True) is not None)'
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    stubbed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env=subprocess_env())
    assert (plain.stdout.strip(), stubbed.stdout.strip()) == ("False", "True")


@needs_nvcc
def test_device_code_reader_agrees_with_nvcc(tmp_path):
    """The ELF and fatbin readers, checked on what nvcc itself writes for known architectures."""
    src = tmp_path / "k.cu"
    src.write_text("__global__ void k(float *x) { x[threadIdx.x] += 1.0f; }\n")
    nvcc = find_nvcc()
    for arch in ("80", "90"):
        cubin = tmp_path / f"k{arch}.cubin"
        subprocess.run([nvcc, "-cubin", f"-arch=sm_{arch}", "-o", cubin, src], check=True, capture_output=True)
        assert cubin_arch(cubin.read_bytes()) == int(arch)
    fatbin = tmp_path / "k.fatbin"
    subprocess.run([nvcc, "--fatbin", "-gencode", "arch=compute_80,code=sm_80", "-gencode",
                    "arch=compute_90,code=[sm_90,compute_90]", "-o", fatbin, src], check=True, capture_output=True)
    assert library_archs(fatbin) == ["compute_90", "sm_80", "sm_90"]
    assert {(i.kind, i.elf_arch) for i in device_images(fatbin.read_bytes()) if i.kind == "elf"} == {("elf", 80), ("elf", 90)}
    assert device_images(b"no device code here") == []


@needs_compiler
def test_database_records_are_applied_before_dlight(tmp_path):
    """A MetaSchedule record schedules its kernel; dlight schedules the rest."""
    import tvm
    from tvm.relax.backend.cuda import pipeline as cuda
    from tvm.s_tir import dlight
    from tvm.s_tir import meta_schedule as ms

    from chipbench import cuda_stub
    from chipbench.backends.tvm import fusion_passes, import_onnx
    from chipbench.backends.tvm_cuda import compile_for, parse_target

    cuda_stub.ensure_cuda_runtime()
    source = prepared("vibration-cnn1d").source
    target = parse_target("sm_90")
    mod, _ = import_onnx(source.onnx_path)
    with target, tvm.transform.PassContext(opt_level=3):
        fused = tvm.transform.Sequential([*cuda.library_dispatch_passes(target), *fusion_passes()])(mod)
    task = ms.relax_integration.extract_tasks(fused, target)[0]
    workload_mod = task.dispatched[0]
    sch = dlight.gpu.Fallback().apply(workload_mod["main"], target, False)
    (tmp_path / "db").mkdir()
    db = ms.database.JSONDatabase(work_dir=str(tmp_path / "db"), module_equality="structural")
    db.commit_tuning_record(ms.database.TuningRecord(
        sch.trace, db.commit_workload(workload_mod), run_secs=[1e-5], target=target,
        args_info=ms.arg_info.ArgInfo.from_prim_func(workload_mod["main"])))

    build = compile_for(source, CompileSpec(target=SM90, options={"metaschedule_db": str(tmp_path / "db")}))
    assert build.details["kernels_from_database"] == 1 < build.details["kernels"]
    assert "metaschedule-db" in build.pipeline and len(build.details["tuning_db"]) == 64
    assert library_archs(export(build, tmp_path)) == ["sm_90"]


def test_targets_a_user_may_write():
    from chipbench.backends.tvm_cuda import parse_target

    for text in (SM90, {"kind": "cuda", "arch": "sm_90"}, "sm_90", "cuda -arch=sm_90"):
        target = parse_target(text)
        assert target.kind.name == "cuda" and target.attrs["arch"] == "sm_90" and target.host.kind.name == "llvm"
    assert parse_target("nvidia/nvidia-h100").attrs["arch"].startswith("sm_90")
    for bad in ('{"kind": "llvm"}', "cuda -arch", "not-a-target"):
        with pytest.raises(ValueError):
            parse_target(bad)


@needs_compiler
@no_gpu_here
def test_what_cannot_be_compiled_says_why():
    from chipbench.backends.base import Unsupported
    from chipbench.backends.tvm_cuda import compile_for

    source = prepared("vibration-cnn1d").source
    for spec, why in ((CompileSpec(), "no CUDA device cuda:0 to take the target from"),
                      (CompileSpec(precision="int8", target=SM90), "not int8"),
                      (CompileSpec(target='{"kind": "llvm"}'), "is llvm, not cuda")):
        with pytest.raises(Unsupported, match=why):
            compile_for(source, spec)


def test_topological_sort_fixes_the_node_order_tvm_needs(tmp_path):
    from chipbench.backends.tvm_cuda import topologically_sorted

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    nodes = [helper.make_node("Relu", ["a"], ["y"]), helper.make_node("Neg", ["x"], ["a"])]  # reader first
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y])), str(path))
    out = onnx.load(str(topologically_sorted(path, tmp_path / "sorted.onnx")))
    assert [n.op_type for n in out.graph.node] == ["Neg", "Relu"]
    onnx.checker.check_model(out)


def test_compile_capability_falls_back_to_available():
    assert compile_capability(get_backend("ort-cpu")) == get_backend("ort-cpu").available()
    assert compile_capability(get_backend("tvm-cuda")) == TvmCuda().can_compile()


@no_gpu_here
def test_list_says_tvm_cuda_has_no_device():
    out = subprocess.run([sys.executable, "-m", "chipbench.cli", "list", "--json"], capture_output=True,
                         text=True, check=True, env=os.environ.copy()).stdout
    backend = {b["name"]: b for b in json.loads(out)["backends"]}["tvm-cuda"]
    assert backend["available"] is False and backend["reason"] == "no CUDA device"


@no_gpu_here
def test_run_here_records_a_skip_with_the_reason(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "chipbench.cli", "run", "-w", "vibration-cnn1d", "-b", "tvm-cuda",
                           "--results-dir", tmp_path], capture_output=True, text=True, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert record["status"] == "skipped" and record["reason"] == "tvm-cuda unavailable: no CUDA device"


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_runs_valid_on_a_gpu(precision):
    from chipbench.cell import execute
    from chipbench.scenarios import MeasureSettings
    from chipbench.suite import Cell

    quick = MeasureSettings(warmup_count=2, warmup_s=0.0, min_count=10, min_duration_s=0.0)
    rec = execute(Cell(workload="vibration-cnn1d", backend="tvm-cuda", precision=precision, device="cuda:0",
                       workload_params={"train": False}, task_samples=0, settings=quick))
    assert rec.status == "ok", rec.reason
    assert rec.verdict == "VALID", rec.accuracy
    device = rec.provenance["device"]
    assert device["kind"] == "cuda" and device["name"] and device["compute_capability"]
    arch = "sm_" + str(device["compute_capability"]).replace(".", "")
    assert rec.backend["details"]["device_code"] == [arch]
    assert rec.latency.count >= 10 and rec.latency.min > 0


@pytest.mark.gpu
def test_timer_times_on_the_device_and_run_copies_back():
    from chipbench.backends.base import get_backend
    from chipbench.device import Device

    prep = prepared("vibration-cnn1d")
    compiled = get_backend("tvm-cuda").compile(prep.source, CompileSpec(device=Device("cuda", 0)))
    out = compiled.run(prep.inputs)
    assert all(isinstance(v, np.ndarray) for v in out.values())
    samples = compiled.timer(prep.inputs, 5)
    assert len(samples) == 5 and all(s > 0 for s in samples)


@needs_compiler
def test_a_dlight_rule_that_raises_on_a_kernel_declines_it_and_the_next_rule_schedules_it():
    """rul-tcn at batch 32: TVM 0.27's Matmul rule asserts on some of its fused kernels."""
    from chipbench.backends.tvm_cuda import compile_for
    from chipbench.prepare import prepare_workload
    from chipbench.workloads.base import get_workload

    source = prepare_workload(get_workload("rul-tcn", train=False), 32, 0).source
    build = compile_for(source, CompileSpec(batch=32, target=SM90))
    assert build.details["dlight_rules_declined"].get("Matmul", 0) > 0
    assert build.details["dlight_rules"][-1] == "Fallback"


def power_model(path: Path, exponents: list[float]) -> Path:
    """y_i = x ** c_i for each constant exponent c_i (ONNX Pow with a Constant, as torch exports `** 2`)."""
    nodes, outputs = [], []
    for i, c in enumerate(exponents):
        nodes += [helper.make_node("Constant", [], [f"c{i}"], value=helper.make_tensor(f"v{i}", TensorProto.FLOAT, [], [c])),
                  helper.make_node("Pow", ["x", f"c{i}"], [f"y{i}"])]
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [8]))
    graph = helper.make_graph(nodes, "powers", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])], outputs)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_small_integer_powers_become_products_that_are_right_for_negative_bases(tmp_path):
    """CUDA's fast-math powf is NaN for a negative base (sensor-ae's score was -3.4e38 on an H200):
    x ** 2 and x ** 3 become products, other exponents stay power."""
    import tvm
    from tvm import relax

    from chipbench.backends.tvm import import_onnx
    from chipbench.backends.tvm_cuda import exact_powers

    mod, _ = import_onnx(power_model(tmp_path / "pow.onnx", [2.0, 3.0, 0.5]))
    rewritten = exact_powers()(mod)
    text = rewritten.script()
    assert text.count("R.power(") == 1 and "R.const(0.5" in text  # only x ** 0.5 is left a power
    exe = tvm.compile(rewritten, target="llvm")
    vm = relax.VirtualMachine(exe, tvm.cpu())
    x = np.linspace(-3, 3, 8, dtype=np.float32)
    y2, y3, _ = (o.numpy() for o in vm["main"](tvm.runtime.tensor(x)))
    np.testing.assert_array_equal(y2, x * x)
    np.testing.assert_allclose(y3, x ** 3, rtol=1e-6)


@needs_compiler
def test_the_cuda_kernels_of_a_square_hold_no_powf(tmp_path):
    from chipbench.backends.base import ModelSource
    from chipbench.backends.tvm_cuda import compile_for

    source = ModelSource("powers", power_model(tmp_path / "pow.onnx", [2.0]), ("x",), ("y0",))
    build = compile_for(source, CompileSpec(target=SM90))
    modules, sources = [build.exe.mod], []
    while modules:
        module = modules.pop()
        modules += list(module.imports)
        sources += [module.inspect_source()] if module.kind == "cuda" else []
    assert len(sources) == 1 and "__global__" in sources[0] and "powf" not in sources[0]
    assert "Transpose" not in build.details["dlight_rules"]  # its kernel for a transpose + add crashed an H200
