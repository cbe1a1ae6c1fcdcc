"""Per-PrimFunc times of a Relax VM build (the `profile` of `tvm-llvm` and `tvm-llvm-tuned`).

TVM (`tvm-llvm`, untuned: one PrimFunc per Relax op; `tvm-llvm-tuned`: the MetaSchedule
database is found as that backend finds it, and rows are the fused, scheduled PrimFuncs):
TVM 0.27's Relax VM has no profiler (no `VirtualMachine(..., profile=True)`, no `vm.profile`,
no `runtime.profiling` in this build). Timing each VM call from Python with
`vm.set_instrument` is not honest either: the callback between kernels lets TVM's thread pool
go to sleep, and on a 2-core Zen 4 the instrumented kernels summed to 2.3x the uninstrumented
end-to-end time. So one instrumented run captures every PrimFunc call and its arguments, and
each call is then timed alone with the library's `time_evaluator` (warm, back to back, median
over `runs` repeats of >= 1 ms). Rows are the compiled PrimFuncs; their op types are the Relax
op names their symbols carry (`fused_conv1d_add_relu` -> conv1d+add+relu, `add3` -> add).
FLOPs are TVM's own count of the PrimFunc's TIR (`estimate_tir_flops`: a multiply-add is 2,
as in onnx_flops); bytes are the call's argument tensors (inputs read once, outputs written
once). What the VM does between kernels (allocation, shape checks, builtins) is in the
end-to-end time and not in any row.

"""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from chipbench.opprofile import OpProfile, OpProfileError, OpTime, finish, median

_VM_BUILTIN_PREFIXES = ("vm.", "runtime.")


def profile_build(backend: str, mod: Any, exe: Any, weights: list, target: Any, pipeline: str, inputs: dict,
                  input_names: Sequence[str], runs: int = 10, warmup: int = 3, threads: int = 1,
                  tuned: bool = False, weight_prepack: bool = False, min_repeat_ms: int = 1) -> OpProfile:
    """Per-PrimFunc times of a built Relax executable `exe` (see module doc). `mod` is the module
    it was built from (for TIR FLOP counts), `weights` its parameters; `tuned`/`weight_prepack`
    say how the build applied a MetaSchedule database. Times in ms, rows slowest first."""
    import numpy as np
    import tvm

    from chipbench.backends.tvm import load

    tir_flops = _tir_flops(mod, target, tuned=tuned, weight_prepack=weight_prepack)
    dev = tvm.cpu()
    vm, main, params = load(exe, weights, dev)
    args = [tvm.runtime.tensor(np.asarray(inputs[n], order="C"), dev) for n in input_names]
    for _ in range(max(warmup, 1)):
        main(*args, *params)
    e2e = []
    for _ in range(runs):
        start = time.perf_counter()
        main(*args, *params)
        e2e.append((time.perf_counter() - start) * 1e3)

    libs = _modules(exe.mod)
    calls: list[tuple[str, Any, tuple]] = []
    builtins: set[str] = set()

    def instrument(func, symbol, before, ret, *call_args):
        if before:
            lib = None if symbol.startswith(_VM_BUILTIN_PREFIXES) else _owner(libs, symbol)
            if lib is None:
                builtins.add(symbol)
            else:
                calls.append((symbol, lib, call_args))
        return 0  # VMInstrumentReturnKind.NO_OP

    vm.set_instrument(instrument)
    main(*args, *params)
    if not calls:
        raise OpProfileError("the Relax VM made no PrimFunc calls that could be timed")

    per_func: dict[str, list[float]] = {}
    ncalls: dict[str, int] = defaultdict(int)
    nbytes: dict[str, float] = defaultdict(float)
    for symbol, lib, call_args in calls:
        timer = lib.time_evaluator(symbol, dev, number=1, repeat=runs, min_repeat_ms=min_repeat_ms)
        results = [r * 1e3 for r in timer(*call_args).results]
        acc = per_func.setdefault(symbol, [0.0] * len(results))
        per_func[symbol] = [a + r for a, r in zip(acc, results)]
        ncalls[symbol] += 1
        nbytes[symbol] += sum(_nbytes(a) for a in call_args)

    ops = []
    missing = []
    for symbol, times in per_func.items():
        flops = tir_flops.get(symbol.removesuffix(PREPACKED))
        if flops is None:
            missing.append(symbol)
        ops.append(OpTime(
            backend=backend, name=symbol, op_type="+".join(tvm_op_types(symbol)),
            time_ms=median(times), calls=ncalls[symbol],
            flops=None if flops is None else flops * ncalls[symbol], bytes=nbytes[symbol],
            flops_source=None if flops is None else "tir",
        ))
    ops = finish(ops)
    e2e_ms = median(e2e)
    ops_ms = sum(o.time_ms for o in ops)
    method = (f"TVM {tvm.__version__} Relax VM ({pipeline}), target {target}; each PrimFunc call "
              f"captured from one VM run and timed alone with time_evaluator (median of {runs} "
              f"repeats, >= {min_repeat_ms} ms each)")
    notes = [f"end-to-end (vm['main'], no instrument) {e2e_ms:.3f} ms; kernels timed alone sum to "
             f"{ops_ms:.3f} ms; the rest is the VM's own work ({len(builtins)} kinds of builtin "
             "call: allocation, shape checks, reshapes) and cache effects"]
    if missing:
        notes.append(f"no TIR FLOP count for {len(missing)} functions: {', '.join(missing[:8])}")
    return OpProfile(workload="", backend=backend, batch=0, runs=runs, threads=threads, e2e_ms=e2e_ms,
                     ops=ops, method=method, notes=notes)


def _modules(root: Any) -> list[Any]:
    out, stack = [], [root]
    while stack:
        m = stack.pop()
        out.append(m)
        stack.extend(m.imports)
    return out


def _owner(libs: list[Any], symbol: str) -> Any:
    for lib in libs:
        if lib.kind != "relax.VMExecutable" and lib.implements_function(symbol):
            return lib
    return None


def _nbytes(arg: Any) -> int:
    shape, dtype = getattr(arg, "shape", None), getattr(arg, "dtype", None)
    if shape is None or dtype is None:
        return 0
    import numpy as np

    return math.prod(int(s) for s in shape) * np.dtype(str(dtype)).itemsize


def _tir_flops(mod: Any, target: Any, tuned: bool, weight_prepack: bool = False) -> dict[str, float]:
    """FLOPs per PrimFunc (TVM's estimate_tir_flops) of the module the build lowers, by name."""
    import tvm
    from tvm import relax
    from tvm.s_tir.analysis import estimate_tir_flops

    from chipbench.backends.tvm import fuse

    if tuned:  # the library dispatch and fusion the tuned build runs first (same names)
        lowered = fuse(mod, target, weight_prepack)
    else:
        with target:
            lowered = relax.get_pipeline("default")(mod)
    out = {}
    for gv, func in lowered.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            try:
                out[gv.name_hint] = float(estimate_tir_flops(tvm.IRModule({"main": func})))
            except Exception:  # noqa: BLE001 - dynamic loops and extern calls cannot be counted
                pass
    return out


_EXTRA_OPS = ("transpose", "dense", "batch_matmul", "concatenate", "pool", "softmax", "T", "compute",
              "fused", "split", "pad", "cast")


@lru_cache(maxsize=1)
def _relax_op_vocabulary() -> frozenset[str]:
    names: set[str] = set(_EXTRA_OPS)
    try:
        import tvm

        names |= {n.rsplit(".", 1)[-1] for n in tvm.ir.Op.list_op_names() if n.startswith("relax.")}
    except Exception:  # noqa: BLE001 - without TVM, split on the obvious
        names |= {"conv1d", "conv2d", "conv3d", "matmul", "add", "multiply", "subtract", "divide", "relu",
                  "max_pool1d", "max_pool2d", "avg_pool2d", "mean", "reshape", "layer_norm", "gelu", "erf",
                  "tanh", "sigmoid", "exp", "sqrt", "power", "strided_slice", "take", "squeeze"}
    return frozenset(names)


PREPACKED = "_prepacked"  # SplitLayoutRewritePreproc's name for a kernel that reads prepacked weights


def tvm_op_types(symbol: str) -> list[str]:
    """Relax op names a PrimFunc symbol carries: "fused_conv1d1_add1_relu1" -> [conv1d, add, relu];
    "max_pool1d3" -> [max_pool1d]. Unknown parts are kept (digits stripped)."""
    vocab = _relax_op_vocabulary()
    name = symbol.removesuffix(PREPACKED)
    name = name[len("fused_"):] if name.startswith("fused_") else name
    tokens = [t for t in name.split("_") if t]
    out, i = [], 0
    while i < len(tokens):
        for j in range(len(tokens), i, -1):
            cand = "_".join(tokens[i:j])
            base = cand if cand in vocab else re.sub(r"\d+$", "", cand)
            if base in vocab and base not in ("fused", "T"):
                out.append(base)
                i = j
                break
        else:
            tok = re.sub(r"\d+$", "", tokens[i]) or tokens[i]
            if tok not in ("fused", "T"):
                out.append(tok)
            i += 1
    return out or [symbol]


