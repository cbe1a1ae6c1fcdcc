"""Apache TVM (Relax): ONNX → Relax → tvm.compile for the host CPU, run on the Relax VM.

Weights stay VM parameters (`keep_params_in_input=True`): baking them in as constants makes
the compiled library as large as the model and slows compilation. `tvm-llvm` applies no
MetaSchedule database: the default CPU pipeline's schedules only, so results say "untuned".
`tvm-llvm-tuned` (tvm_tuned.py) is the same backend with a database.
"""

from __future__ import annotations

import importlib.util
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from chipbench.backends.base import (Arrays, Compiled, CompileSpec, ModelSource, Unsupported,
                                     converts, register, require_precision)
from chipbench.backends import tvm_build_cache as build_cache
from chipbench.backends.tvm_build_cache import BuildCacheEntry
from chipbench.backends.tvm_export import export_relax
from chipbench.backends.tvm_runtime import InputBuffers, to_numpy
from chipbench.machine import usable_cores


def host_target(threads: int | None = None) -> Any:
    """The LLVM target for this CPU, e.g. {"kind": "llvm", "mcpu": "znver4", "num-cores": 2}.

    $CHIPBENCH_TVM_TARGET (TVM JSON, or 'llvm -mcpu=haswell -num-cores=2') stands in for the
    detected CPU: to build, tune and look up databases as another x86 CPU would (its code must
    still run here to be measured). `threads`, when given, sets its num-cores. ValueError when
    the variable holds no target."""
    import tvm
    from tvm.target import codegen

    cores = threads or usable_cores()
    override = os.environ.get("CHIPBENCH_TVM_TARGET", "").strip()
    if override:
        from chipbench.tuning.transfer import target_from_text

        spec = target_from_text(override)
        if threads or "num-cores" not in spec:
            spec["num-cores"] = cores
        return tvm.target.Target(spec)
    return tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": cores})


def use_all_cores(threads: int | None = None) -> int:
    """TVM's CPU runtime starts half as many threads as the OS has CPUs on x86 (it assumes SMT
    pairs): one thread on a 2-vCPU VM. Ask for every usable core (or `threads`) unless the user
    set TVM_NUM_THREADS; this must happen before the thread pool's first parallel call."""
    os.environ.setdefault("TVM_NUM_THREADS", str(threads or usable_cores()))
    return int(os.environ["TVM_NUM_THREADS"])


def runtime_threads(asked: int) -> int:
    """The threads TVM's CPU thread pool runs, read back from the runtime (`runtime.NumThreads`,
    which may differ from TVM_NUM_THREADS: TVM caps it by the CPUs it may use); `asked` where
    the runtime cannot say."""
    import tvm

    read = tvm.get_global_func("runtime.NumThreads", allow_missing=True)
    try:
        return int(read()) if read is not None else asked
    except Exception:
        return asked


def import_onnx(onnx_path: Path) -> tuple[Any, list[Any]]:
    """ONNX → Relax IRModule with weights as parameters; returns (module, weight tensors)."""
    import onnx
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(str(onnx_path))
    try:
        mod = from_onnx(model, keep_params_in_input=True)
    except Exception as exc:  # the importer raises OpNotImplemented and friends, all one line
        if type(exc).__name__ == "OpNotImplemented":
            ops = tuple(o.strip() for o in str(exc).rpartition(":")[2].split(",") if o.strip())
            raise Unsupported(f"TVM Relax ONNX importer: {exc}", ops=ops) from None
        node = failing_node(exc)
        if node is None:
            raise
        from chipbench.errors import one_line

        label = f"node '{node.name}' ({node.op_type})" if node.name else f"an unnamed {node.op_type} node"
        raise Unsupported(f"TVM Relax ONNX importer failed on {label}: {one_line(exc)}", ops=(node.op_type,)) from None
    mod, params = relax.frontend.detach_params(mod)
    return mod, list(params.get("main", []))


def failing_node(exc: BaseException) -> Any:
    """The ONNX node an importer was converting when it raised: the innermost frame of the
    traceback holding a NodeProto in a local named `node` (the loop variable of TVM 0.27's
    `GraphProto._construct_nodes`). It reads the importer's internals, so it may find nothing
    in another TVM release: then None, and the caller reports the error without a node."""
    from onnx import NodeProto

    found, tb = None, exc.__traceback__
    while tb is not None:
        node = tb.tb_frame.f_locals.get("node")
        if isinstance(node, NodeProto):
            found = node
        tb = tb.tb_next
    return found


def fusion_passes(target: Any = None) -> list[Any]:
    """Legalize and fuse: what MetaSchedule task extraction sees, so database keys match. For a
    CUDA target small integer powers become products first (`tvm_cuda.exact_powers`: CUDA's
    fast-math powf is NaN for negative bases)."""
    from tvm import relax

    exact = []
    if target is not None and target.kind.name == "cuda":
        from chipbench.backends.tvm_cuda import exact_powers

        exact = [exact_powers()]
    return [
        *exact,
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]


def fuse(mod: Any, target: Any, weight_prepack: bool = False) -> Any:
    """Library dispatch, legalize and fuse: the module MetaSchedule extracts its tasks from and
    `build()` applies a database to. With `weight_prepack` the kernels' weight buffers are
    marked layout-free, so a schedule may store weights in the order its loops read them
    (MetaSchedule's RewriteLayout) instead of gathering across OIHW on every call."""
    import tvm
    from tvm import relax
    from tvm.relax import pipeline as relax_pipeline

    passes = [*relax_pipeline.library_dispatch_passes(target), *fusion_passes(target)]
    if weight_prepack:
        passes.append(relax.transform.AttachAttrLayoutFreeBuffers())
    with target, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(passes)(mod)


def build(mod: Any, target: Any, database_dir: Path | None = None,
          weight_prepack: bool = False) -> tuple[Any, str]:
    """Compile for `target`; with a MetaSchedule database apply its records. Returns (exe, pipeline).
    With `weight_prepack` (a database tuned so) the weights' layout changes move into a
    `main_transform_params` function that `load()` runs once, as a runtime prepacks at load."""
    import tvm
    from tvm import relax
    from tvm.relax import pipeline as relax_pipeline

    if database_dir is None:
        return tvm.compile(mod, target=target), "relax-default (untuned)"

    from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline
    from tvm.s_tir import meta_schedule as ms

    database = ms.database.JSONDatabase(work_dir=str(database_dir), module_equality="structural")
    prepack = [relax.transform.SplitLayoutRewritePreproc(), relax.transform.LiftTransformParams(),
               relax.transform.FoldConstant()] if weight_prepack else []

    @tvm.transform.module_pass(opt_level=3)
    def tuned_pipeline(mod, _ctx):
        mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(fuse(mod, target, weight_prepack))
        # TVM 0.27: relax.pipeline.dataflow_lower_passes(llvm) raises AttributeError, because
        # relax.backend.cpu_generic's __init__ does not export it; take it from its pipeline module.
        lower = cpu_pipeline if target.kind.name == "llvm" else relax_pipeline
        return tvm.transform.Sequential(
            prepack + lower.dataflow_lower_passes(target) + lower.finalize_passes(target)
        )(mod)

    with target, database, tvm.transform.PassContext(opt_level=3):
        exe = tvm.compile(mod, target=target, relax_pipeline=tuned_pipeline)
    return exe, "relax-fused + metaschedule-db" + (" + weight prepack" if weight_prepack else "")


def built_library(mod: Any, onnx_path: Path, target: Any, database: Path | None,
                  weight_prepack: bool, keep: bool = True) -> tuple[Any, str, BuildCacheEntry | None]:
    """(what a VM runs, pipeline, cache entry): the library built earlier from exactly these
    inputs (chipbench.backends.tvm_build_cache), else `build()`'s executable, exported into the
    cache. The entry is None when the cache is off or `keep` is False (then the first item is
    the executable, nothing written)."""
    from chipbench import tuning

    if not keep:
        return (*build(mod, target, database, weight_prepack), None)

    key = build_cache.build_key(onnx_path, target, tuning.records_digest(database) if database else None,
                                weight_prepack)
    entry = build_cache.lookup(key)
    if entry is not None:
        return build_cache.load(entry), entry.pipeline, entry
    start = time.perf_counter()
    exe, pipeline = build(mod, target, database, weight_prepack)
    entry = build_cache.store(key, exe, time.perf_counter() - start, pipeline)
    return exe, pipeline, entry


def load(exe: Any, weights: list, device: Any) -> tuple[Any, Any, list]:
    """(VM, its `main`, the weights as `main` takes them): prepacked once here when the build
    lifted weight layout changes out of `main`."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(exe, device)
    params = [tvm.runtime.tensor(w.numpy(), device) for w in weights]
    if vm.module.implements_function("main_transform_params"):
        params = list(vm["main_transform_params"](params))
    return vm, vm["main"], params


def weight_bytes(weights: list) -> int:
    """Bytes the weights take (TVM tensors or numpy arrays), from their shapes and dtypes."""
    return sum(math.prod(int(d) for d in w.shape) * np.dtype(str(w.dtype)).itemsize for w in weights)


def library_bytes(exe: Any) -> int:
    """Size of the compiled library as it would ship (exported shared object)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.so"
        exe.export_library(str(path))
        return path.stat().st_size


@register("tvm-llvm")
class TvmLlvm:
    description = "Apache TVM Relax, LLVM for the host CPU, Relax VM"
    # int8 runs ONNX Runtime's QDQ-quantized model; TVM lowers its Q/DQ pairs literally, so the
    # arithmetic stays fp32 between them (int8 accuracy, no int8 speed): the pipeline says so.
    precisions = ("fp32", "int8")
    devices = ("cpu", "rpc")  # rpc: a board behind a TVM RPC tracker (tvm_rpc.py)

    def available(self) -> tuple[bool, str]:
        if importlib.util.find_spec("tvm") is None:
            return False, "apache-tvm is not installed"
        return True, ""

    def versions(self) -> dict[str, str]:
        import tvm

        return {"tvm": tvm.__version__, "llvm": str(tvm.support.libinfo().get("LLVM_VERSION", ""))}

    def compile(self, source: ModelSource, spec: CompileSpec) -> Compiled:
        import tvm

        require_precision(self, spec, source)
        threads = use_all_cores(spec.threads)
        remote = None
        if spec.device.kind == "rpc":  # a session for the whole cell: the board's target, then its timing
            from chipbench.backends.tvm_rpc import RemoteSession

            remote = RemoteSession(spec.device)
        if spec.target:
            target = tvm.target.Target(spec.target)
        else:
            target = remote.target(spec.threads) if remote else host_target(spec.threads)
        start = time.perf_counter()
        onnx_path = source.onnx_path
        quantize = converts(spec, source) and spec.precision == "int8"
        quantization = None
        if quantize:  # the best QDQ configuration of the int8 search (ORT's, not TVM's, timing)
            from chipbench.int8_search import int8_for

            onnx_path, quantization = int8_for(onnx_path, spec, self.name, qdq_only=True)
        mod, weights = import_onnx(onnx_path)
        # Plain tvm-llvm is untuned whatever --tuning-db says; tvm-llvm-tuned hands its database here.
        database = spec.options.get("metaschedule_db")
        prepack = bool(spec.options.get("weight_prepack"))
        exe = None

        def executable() -> Any:
            """The relax executable, built here when the library came from the build cache
            (per-operator profiles and bundles need the executable itself)."""
            nonlocal exe
            if exe is None:
                exe = build(mod, target, database, prepack)[0]
            return exe

        int8_note = f", ORT QDQ int8 model {quantization['executed']} (Q/DQ lowered literally: fp32 compute)" \
            if quantize else ""
        if remote is not None:
            exe, pipeline = build(mod, target, database, prepack)
            compiled = remote.compiled(exe, weights, source.input_names, source.output_names,
                                       compile_s=time.perf_counter() - start, target=str(target),
                                       pipeline=pipeline + int8_note, tuning_db=None)
            compiled.quantization = quantization
            return compiled
        keep = spec.options.get("artifact_bytes", True)
        library, pipeline, cached = built_library(mod, onnx_path, target, database, prepack, keep)
        if cached is None:  # the cache is off: the library is the executable itself
            exe = library
        pipeline += int8_note
        device = tvm.cpu()
        _vm, main, params = load(library, weights, device)
        compile_s = time.perf_counter() - start  # weight prepacking included, as in a session's start
        threads = runtime_threads(threads)
        names = source.input_names
        out_names = source.output_names

        upload = InputBuffers(names, device)

        def run(inputs: Arrays) -> Arrays:
            return dict(zip(out_names, to_numpy(main(*upload(inputs), *params))))

        def profile(inputs: Arrays, runs: int):
            from chipbench.backends.tvm_profile import profile_build

            return profile_build(self.name, mod, executable(), weights, target, pipeline, inputs, names, runs=runs,
                                 threads=threads, tuned=database is not None, weight_prepack=prepack)

        # exporting the library to weigh it links a shared object (about half a small model's
        # build): skipped, with the cache, when the caller asks for no artifact (correctness-only runs)
        lib_bytes = cached.library_bytes if cached else (library_bytes(exe) if keep else None)
        param_bytes = weight_bytes(weights)
        return Compiled(
            run=run,
            profile=profile,
            compile_s=compile_s,
            artifact_bytes=lib_bytes + param_bytes if lib_bytes is not None else None,
            target=str(target),
            pipeline=pipeline,
            tuning_db=None,  # tvm-llvm-tuned names the database it applied
            details={"library_bytes": lib_bytes, "param_bytes": param_bytes, "threads": threads,
                     "build_cache": cached.to_dict() if cached else None},
            export=lambda folder: export_relax(executable(), weights, folder, device_kind="cpu"),
            quantization=quantization,
        )
