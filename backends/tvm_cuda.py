"""Apache TVM (Relax) for NVIDIA GPUs: ONNX → Relax → dlight GPU schedules → CUDA → Relax VM.

The pipeline (`cuda_pipeline`), in TVM 0.27's own order for CUDA
(`tvm.relax.backend.cuda.pipeline`), with dlight's whole GPU rule set:

1. library dispatch (sampling, sort/scan), small integer powers made products (`exact_powers`:
   fast math's powf is NaN for negative bases), then legalize and fuse
   (`backends.tvm.fusion_passes`, the passes MetaSchedule extracts its tasks after, so database
   keys match);
2. with a MetaSchedule database (`spec.options["metaschedule_db"]` or `spec.tuning_db`), its
   records first: `MetaScheduleApplyDatabase` schedules the kernels it has a record for and
   marks them scheduled;
3. `dlight.ApplyDefaultSchedule` on every kernel still unscheduled, trying the rules in
   `DLIGHT_RULES` order (the first that fits wins; `Fallback` fits any kernel);
4. dataflow lowering and finalization (memory planning, VM shape lowering), then code
   generation: CUDA C per kernel, compiled by nvcc (NVRTC where only it is installed) to
   machine code for the target's `sm_XX` (a fatbin; NVRTC: a cubin), embedded in the library;
   host code for a generic x86-64 LLVM host.

Weights stay VM parameters (as `tvm-llvm` keeps them), uploaded to the device once at load.
fp16 compiles the model after ONNX's float16 conversion (`chipbench.quantize.fp16_model`, as
`ort-cpu` does): weights and arithmetic in fp16, inputs and outputs kept fp32.

Cross-compiling on a host without a GPU: `compile_for(source, spec)` needs only TVM, nvcc and a
C compiler (for the driver stub, `chipbench.cuda_stub`), and `spec.target` naming the arch.
Its executable exports with `exe.export_library(path)` and loads on the GPU host with
`tvm.runtime.load_module(path)` and `relax.VirtualMachine(module, tvm.cuda(i))`, the weights
passed after the inputs (see `load`).
"""

from __future__ import annotations

import heapq
import importlib.util
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from chipbench.backends.base import (Arrays, Compiled, CompileSpec, ModelSource, Unsupported, converts, register,
                                     require_precision)
from chipbench.gpu import cuda_present

DLIGHT_RULES = ("Matmul", "GEMV", "LowBatchGEMV", "Reduction", "GeneralReduction", "RMSNorm", "Fallback")
"""dlight GPU rules (`tvm.s_tir.dlight.gpu`), tried in this order on each kernel. The specific
ones come first and `Fallback` (any kernel: fuse loops, bind to blocks and threads) last, as in
TVM's own CUDA pipeline (Matmul, GEMV, Reduction, GeneralReduction, Fallback), with LowBatchGEMV
after GEMV as MLC-LLM orders them, and RMSNorm before Fallback. dlight's Transpose rule is left
out, as TVM's own pipeline leaves it out: on an H200 (sm_90, TVM 0.27) the kernel it made for a
transpose with a fused add (sensor-transformer at batch 1) crashed the process (SIGSEGV), where
Fallback's kernel for the same function is correct."""

HOST_TARGET = {"kind": "llvm"}  # generic x86-64: the library's host side runs on the GPU server's CPU


class CudaBuild(NamedTuple):
    """What `compile_for` returns: the Relax executable (`exe.export_library(path)` writes the
    shared library), the weights in the order `main` takes them after the inputs (TVM tensors
    on the host), the TVM target it was built for, the pipeline as recorded, and details
    (compiler, driver stub, rules, database coverage, compile seconds)."""

    exe: Any
    weights: list
    target: Any
    pipeline: str
    details: dict


SMALL_POWERS = (2, 3)
"""Integer exponents whose `power` the CUDA pipeline computes by multiplication (`exact_powers`)."""


def exact_powers() -> Any:
    """A Relax module pass: `power(x, c)` with a scalar constant c in SMALL_POWERS becomes
    `x * x` (and `x * x * x`).

    TVM compiles CUDA with `--use_fast_math` (nvcc and NVRTC alike, `tvm.support.nvcc`), under
    which `powf(x, y)` is `__powf`, computed as exp2(y * log2(x)): NaN for every negative x,
    although x² is defined for every x (CUDA C Programming Guide, "Intrinsic Functions").
    Squares are everywhere in exported graphs: a mean squared error, the variance of a
    LayerNorm exported before opset 17, the cube of GELU's tanh approximation. Measured on an
    H200: sensor-ae's anomaly score, max over sensors of mean((rec - x) ** 2), came out
    -3.4e38 (the max of NaNs) with powf, and matches the CPU reference with the product."""
    import tvm
    from tvm import relax
    from tvm.relax import expr_functor

    @expr_functor.mutator
    class Powers(relax.PyExprMutator):
        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = super().visit_call_(call)
            if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.power"):
                return call
            base, exponent = call.args
            if not isinstance(exponent, tvm.ir.expr.Constant) or exponent.value.numpy().size != 1:
                return call
            n = float(exponent.value.numpy().reshape(()))
            if n not in SMALL_POWERS or exponent.ty.dtype != base.ty.dtype:
                return call
            out = base
            for _ in range(int(n) - 1):
                out = relax.op.multiply(out, base)
            return out

    @tvm.transform.module_pass(opt_level=0, name="ChipbenchExactPowers")
    def rewrite(mod, _ctx):
        powers = Powers(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                powers.builder_.update_func(gv, powers.visit_expr(func))
        return powers.builder_.get()

    return rewrite


def tvm_has_cuda() -> bool:
    """Cheap: is TVM installed with its CUDA runtime module (`tvm/lib/libtvm_runtime_cuda.so`)?"""
    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        return False
    return any((Path(p) / "lib" / "libtvm_runtime_cuda.so").is_file() for p in spec.submodule_search_locations)


def find_nvcc() -> str | None:
    """nvcc on PATH, else under $CUDA_HOME / $CUDA_PATH, else /usr/local/cuda/bin; None if absent."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


@lru_cache(maxsize=1)
def nvcc_version() -> str:
    """nvcc's release, e.g. "13.0.88" ("" when nvcc is missing or does not answer)."""
    nvcc = find_nvcc()
    if nvcc is None:
        return ""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    match = re.search(r"V(\d+\.\d+\.\d+)", out) or re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else ""


def parse_target(text: str | dict) -> Any:
    """A CUDA TVM target from what a user may write: a dict or its JSON text
    (`{"kind": "cuda", "arch": "sm_90"}`), a TVM tag (`nvidia/nvidia-h100`), a bare arch
    (`sm_90`), or the pre-0.27 command-line form (`cuda -arch=sm_90`, which TVM 0.27 no longer
    parses itself). The host side is generic x86-64 LLVM. Raises ValueError for anything else
    or a target that is not CUDA or names no arch."""
    import tvm

    spec: Any = text
    if isinstance(text, str):
        value = text.strip()
        if value.startswith("{"):
            spec = json.loads(value)
        elif re.fullmatch(r"sm_\d+[a-z]?", value):
            spec = {"kind": "cuda", "arch": value}
        elif value.split()[0] == "cuda":
            spec = {"kind": "cuda"}
            for option in value.split()[1:]:
                match = re.fullmatch(r"-{1,2}([\w-]+)=(\S+)", option)
                if not match:
                    raise ValueError(f"target '{text}': cannot read option '{option}' (expected -key=value)")
                spec[match.group(1).replace("-", "_")] = match.group(2)
        else:
            spec = value  # a tag
    try:
        target = tvm.target.Target(spec, host=HOST_TARGET)
    except Exception as exc:
        raise ValueError(f"target '{text}': {str(exc).strip().splitlines()[-1][:200]}") from None
    if target.kind.name != "cuda":
        raise ValueError(f"target '{text}' is {target.kind.name}, not cuda")
    if not str(target.attrs.get("arch", "")).startswith("sm_"):
        raise ValueError(f"target '{text}' names no arch (e.g. sm_90)")
    return target


def device_target(index: int) -> Any:
    """The target of local CUDA device `index`, from its compute capability and limits
    (TVM's `Target.from_device`). Raises Unsupported when there is no such device."""
    import tvm

    device = tvm.cuda(index)
    if not device.exist:
        raise Unsupported(f"no CUDA device cuda:{index} to take the target from; cross-compile with a target "
                          "such as '{\"kind\": \"cuda\", \"arch\": \"sm_90\"}'")
    return tvm.target.Target(tvm.target.Target.from_device(device), host=HOST_TARGET)


def resolve_target(spec: CompileSpec) -> Any:
    """`spec.target` (or `spec.options["target"]`) when given, else the device's own."""
    explicit = spec.target or spec.options.get("target")
    if explicit:
        return parse_target(explicit)
    return device_target(spec.device.index if spec.device.kind == "cuda" else 0)


def dlight_rules(stats: dict | None = None) -> list:
    """Instances of DLIGHT_RULES, each made to decline (so the next rule is tried) where it
    raises instead of returning None: TVM 0.27's Matmul rule asserts on some fused kernels
    (rul-tcn's at batch 32: "consumers of the cache-write stage ... not properly inlined").
    A rule applies to a fresh Schedule of the kernel, so a failed attempt leaves it as it was.
    `stats["dlight_rules_declined"]` counts those declines per rule."""
    from tvm.s_tir import dlight

    class Declining(dlight.ScheduleRule):
        def __init__(self, name: str) -> None:
            self.name, self.rule = name, getattr(dlight.gpu, name)()

        def apply(self, func, target, tunable):
            try:
                return self.rule.apply(func, target, tunable)
            except Exception:  # noqa: BLE001 - a rule that cannot schedule this kernel
                if stats is not None:
                    declined = stats.setdefault("dlight_rules_declined", {})
                    declined[self.name] = declined.get(self.name, 0) + 1
                return None

    return [Declining(name) for name in DLIGHT_RULES]


def cuda_pipeline(target: Any, database_dir: Path | None = None, stats: dict | None = None) -> Any:
    """The Relax pipeline described in this module's docstring, as a module pass. With a
    database, `stats["kernels_from_database"]` counts the kernels its records scheduled and
    `stats["kernels"]` all kernels, once the pass has run."""
    import tvm
    from tvm import relax, tirx
    from tvm.relax.backend.cuda import pipeline as cuda
    from tvm.s_tir import dlight

    from chipbench.backends.tvm import fusion_passes

    @tvm.transform.module_pass(opt_level=0, name="ChipbenchCountScheduled")
    def count_scheduled(mod, _ctx):
        if stats is not None:
            funcs = [f for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]
            stats["kernels"] = len(funcs)
            stats["kernels_from_database"] = sum(1 for f in funcs if f.attrs and "tirx.is_scheduled" in f.attrs)
        return mod

    apply_db = [relax.transform.MetaScheduleApplyDatabase(enable_warning=False), count_scheduled] if database_dir else []

    @tvm.transform.module_pass(opt_level=0, name="ChipbenchCudaPipeline")
    def pipeline(mod, _ctx):
        with target:
            return tvm.transform.Sequential([
                *cuda.library_dispatch_passes(target), *fusion_passes(target), *apply_db,
                dlight.ApplyDefaultSchedule(*dlight_rules(stats)),
                *cuda.dataflow_lower_passes(target), *cuda.finalize_passes(target),
            ])(mod)

    return pipeline


def _database_dir(spec: CompileSpec) -> Path | None:
    named = spec.options.get("metaschedule_db") or spec.tuning_db
    if not named:
        return None
    from chipbench.tuning.database import RECORD_FILES, unpacked

    folder = Path(named)
    if not all((folder / f).is_file() or (folder / f"{f}.gz").is_file() for f in RECORD_FILES):
        raise Unsupported(f"tuning database {folder} is not a MetaSchedule database (needs {', '.join(RECORD_FILES)})")
    return unpacked(folder)


def topologically_sorted(onnx_path: Path, out: Path) -> Path:
    """Write `onnx_path` to `out` with its main graph's nodes in dependency order and return
    `out`. ONNX requires that order but ONNX Runtime tolerates its absence, and its float16
    converter appends the input casts after the nodes that read them, which TVM's importer
    rejects (KeyError on 'graph_input_cast_0'). Kahn's algorithm, keeping the original order
    among ready nodes; names no node produces (inputs, initializers, outer scopes) count as
    ready. Raises ValueError on a cycle."""
    import onnx

    model = onnx.load(str(onnx_path))
    nodes = list(model.graph.node)
    producer = {name: i for i, node in enumerate(nodes) for name in node.output if name}
    readers: dict[int, list[int]] = {}
    waiting = []
    for i, node in enumerate(nodes):
        deps = {producer[name] for name in node.input if name in producer} - {i}
        waiting.append(len(deps))
        for d in deps:
            readers.setdefault(d, []).append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    ordered = []
    while ready:
        i = heapq.heappop(ready)
        ordered.append(nodes[i])
        for j in readers.get(i, ()):
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(ordered) != len(nodes):
        raise ValueError(f"{onnx_path}: the graph has a cycle")
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    onnx.save(model, str(out))
    return out


def has_nvrtc() -> bool:
    """Cheap: is NVIDIA's `cuda-bindings` package (NVRTC, TVM's other CUDA compiler) installed?"""
    try:
        return importlib.util.find_spec("cuda.bindings") is not None
    except (ImportError, ValueError):
        return False


def cuda_compile_mode() -> str:
    """How TVM compiles the kernels: $TVM_CUDA_COMPILE_MODE when set, else "nvcc" (a fatbin;
    TVM's own default is NVRTC), else "nvrtc" (a cubin) where only `cuda-bindings` is there.
    Both give machine code for the target's arch. Sets the variable, which TVM reads at each
    compile, and puts nvcc's folder on PATH when it was found elsewhere (TVM runs plain `nvcc`).
    Raises RuntimeError when neither compiler is there."""
    nvcc = find_nvcc()
    if nvcc and shutil.which("nvcc") is None:
        os.environ["PATH"] = os.pathsep.join([str(Path(nvcc).parent), os.environ.get("PATH", "")])
    if "TVM_CUDA_COMPILE_MODE" not in os.environ:
        if nvcc is None and not has_nvrtc():
            raise RuntimeError("neither nvcc (PATH, $CUDA_HOME, /usr/local/cuda) nor NVRTC (the cuda-bindings "
                               "package) is installed: TVM needs one to compile CUDA kernels")
        os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc" if nvcc else "nvrtc"
    return os.environ["TVM_CUDA_COMPILE_MODE"].lower()


def compile_for(source: ModelSource, spec: CompileSpec) -> CudaBuild:
    """ONNX → Relax executable for the spec's CUDA target, without needing a GPU.

    The target is `spec.target` (see `parse_target`) or, on a GPU host, `spec.device`'s own.
    Precision fp32 or fp16 (Unsupported otherwise). Raises Unsupported for an ONNX operator
    TVM cannot import, a missing target on a GPU-less host or a bad database; RuntimeError
    when no CUDA compiler or TVM's CUDA runtime is there (see `TvmCuda.can_compile`)."""
    import tvm

    from chipbench import cuda_stub
    from chipbench.backends.tvm import import_onnx

    require_precision(TvmCuda(), spec, source)
    start = time.perf_counter()
    mode = cuda_compile_mode()
    driver = cuda_stub.ensure_cuda_runtime()
    try:
        target = resolve_target(spec)
    except ValueError as exc:
        raise Unsupported(str(exc)) from None
    to_fp16 = converts(spec, source) and spec.precision == "fp16"  # a graph already in fp16 runs as it is
    if to_fp16:
        from chipbench.quantize import fp16_model

        with tempfile.TemporaryDirectory() as tmp:
            mod, weights = import_onnx(topologically_sorted(fp16_model(source.onnx_path), Path(tmp) / "model.onnx"))
    else:
        mod, weights = import_onnx(source.onnx_path)
    database = _database_dir(spec)
    stats: dict = {}
    if database is not None:
        from tvm.s_tir import meta_schedule as ms

        db = ms.database.JSONDatabase(work_dir=str(database), module_equality="structural")
        with target, db, tvm.transform.PassContext(opt_level=3):
            exe = tvm.compile(mod, target=target, relax_pipeline=cuda_pipeline(target, database, stats))
    else:
        with target, tvm.transform.PassContext(opt_level=3):
            exe = tvm.compile(mod, target=target, relax_pipeline=cuda_pipeline(target, None, stats))
    pipeline = "relax-fused + " + ("metaschedule-db, then " if database else "") + "dlight gpu default schedules"
    pipeline += f", CUDA via {mode}"
    if to_fp16:
        pipeline += ", fp16 weights and compute (ONNX float16 conversion, fp32 I/O)"
    details = {
        "cuda_compiler": f"{mode} {nvcc_version()}".strip() if mode == "nvcc" else mode,
        "cuda_driver_at_compile": driver,  # "stub": cross-compiled on a host without a driver
        "dlight_rules": list(DLIGHT_RULES),
        "tvm_compile_s": time.perf_counter() - start,
        **stats,
    }
    if database is not None:
        from chipbench.tuning.database import records_digest

        details.update({"tuning_db": records_digest(database), "tuning_db_path": str(database)})
    return CudaBuild(exe, weights, target, pipeline, details)


def export_info(exe: Any) -> tuple[int, list[str]]:
    """(bytes, device-code architectures) of the library as `exe.export_library` writes it,
    e.g. (237880, ["sm_90"])."""
    from chipbench.cudabin import library_archs

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.so"
        exe.export_library(str(path))
        return path.stat().st_size, library_archs(path)


@register("tvm-cuda")
class TvmCuda:
    description = "Apache TVM Relax, dlight GPU schedules, CUDA (nvcc) for NVIDIA GPUs, Relax VM"
    precisions = ("fp32", "fp16")
    devices = ("cuda",)

    def available(self) -> tuple[bool, str]:
        if importlib.util.find_spec("tvm") is None:
            return False, "apache-tvm is not installed"
        if not cuda_present():
            return False, "no CUDA device"
        return self.can_compile()

    def can_compile(self) -> tuple[bool, str]:
        """Cheap: can this host compile for a CUDA target (a GPU is not needed)? TVM with its
        CUDA runtime module, nvcc (or NVRTC), and where no GPU is, a C compiler for the stub."""
        from chipbench.cuda_stub import c_compiler

        if importlib.util.find_spec("tvm") is None:
            return False, "apache-tvm is not installed"
        if not tvm_has_cuda():
            return False, "apache-tvm was built without CUDA (no libtvm_runtime_cuda.so)"
        if find_nvcc() is None and not has_nvrtc():
            return False, "nvcc not found (PATH, $CUDA_HOME, /usr/local/cuda), nor NVRTC (cuda-bindings)"
        if not cuda_present() and c_compiler() is None:
            return False, "no C compiler to build the CUDA driver stub for cross-compilation"
        return True, ""

    def versions(self) -> dict[str, str]:
        import tvm

        return {"tvm": tvm.__version__, "nvcc": nvcc_version()}

    def compile(self, source: ModelSource, spec: CompileSpec) -> Compiled:
        """Build for the local GPU `spec.device` (or `spec.target`), load the weights onto it.
        `run` copies inputs in and outputs back to the host; `timer` times `main` alone on the
        device (CUDA events through time_evaluator), inputs uploaded once before and outputs
        left on the device; compile time counts the weight upload. Unsupported without a GPU."""
        import tvm

        from chipbench.backends.tvm import load
        from chipbench.backends.tvm_runtime import InputBuffers, to_numpy
        from chipbench.gpu import describe

        require_precision(self, spec, source)
        index = spec.device.index if spec.device.kind == "cuda" else 0
        device = tvm.cuda(index)
        if not device.exist:
            raise Unsupported(f"no CUDA device cuda:{index}")
        start = time.perf_counter()
        build = compile_for(source, spec)
        vm, main, params = load(build.exe, build.weights, device)
        device.sync()
        compile_s = time.perf_counter() - start  # weights on the device included, as a session's start
        names, out_names = source.input_names, source.output_names
        upload = InputBuffers(names, device)  # input tensors on the device, allocated once

        def run(inputs: Arrays) -> Arrays:
            outs = main(*upload(inputs), *params)
            return dict(zip(out_names, to_numpy(outs)))  # .numpy() copies to the host after the device is done

        def timer(inputs: Arrays, n: int) -> list[float]:
            """`n` queries timed by the device (TVM's CUDA timer: events around each call of
            `main`, number=1 per repeat); inputs are uploaded once, before, and outputs stay on
            the device, as in a deployment that keeps its buffers there. time_evaluator runs one
            untimed call first."""
            args = upload(inputs)
            result = vm.time_evaluator("main", device, number=1, repeat=max(n, 1))(*args, *params)
            return [float(s) for s in result.results][:n]

        compiled = self._compiled(build, run, compile_s)
        compiled.device, compiled.timer = describe(index, tvm_device=device), timer
        compiled.timer_untimed_calls = 1  # time_evaluator runs `main` once before it times
        return compiled

    def compile_for_bundle(self, source: ModelSource, spec: CompileSpec) -> Compiled:
        """Cross-compile for `spec.target` on a host that may have no GPU: a Compiled whose
        `export` writes the bundle and whose `run` says the model runs on the device only."""
        require_precision(self, spec, source)
        start = time.perf_counter()
        build = compile_for(source, spec)

        def run(inputs: Arrays) -> Arrays:
            raise Unsupported(f"cross-compiled for {build.target}: it runs where that GPU is (a bundle)")

        return self._compiled(build, run, time.perf_counter() - start)

    @staticmethod
    def _compiled(build: CudaBuild, run, compile_s: float) -> Compiled:
        from chipbench.backends.tvm import weight_bytes
        from chipbench.backends.tvm_export import export_relax

        lib_bytes, archs = export_info(build.exe)
        param_bytes = weight_bytes(build.weights)
        return Compiled(
            run=run,
            compile_s=compile_s,
            artifact_bytes=lib_bytes + param_bytes,
            target=str(build.target),
            pipeline=build.pipeline,
            tuning_db=build.details.get("tuning_db"),  # sha256 of the records applied; None = untuned
            details={**build.details, "library_bytes": lib_bytes, "param_bytes": param_bytes, "device_code": archs},
            export=lambda folder: export_relax(build.exe, build.weights, folder, device_kind="cuda"),
        )
