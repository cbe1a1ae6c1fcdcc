"""A hand-scheduled FP32 GEMM in TVM TensorIR: the worked example a compiler engineer starts from.

C[M, N] = A[M, K] · B[K, N], written as a tensor expression and then scheduled by hand with
`tvm.s_tir.Schedule`. The schedule is the classic BLIS-style CPU GEMM:

1. Pack B into panels Bp[N/nr, K, nr]: the micro-kernel then streams one contiguous nr-wide
   row of B per k (one or two cache lines), instead of striding through B by N floats.
2. Tile C into mr × nr register blocks (8 × 32 = 16 zmm accumulators for AVX-512): each
   broadcast of A[i, k] feeds nr/16 FMAs and each loaded B vector feeds mr FMAs; 16
   independent accumulator chains cover the FMA latency (4 cycles) at one zmm FMA per cycle
   (Zen 4 splits a 512-bit FMA over its two 256-bit pipes). 32 registers leave room for loads.
3. Accumulate in a small local buffer (`cache_write` + `reverse_compute_at`) that LLVM
   promotes to registers once the mr loop is unrolled and the nr loop vectorised; write C once.
4. Loop order panel-of-B outer, rows inner: a K × nr panel of B (K·nr·4 bytes, 128 KiB at
   K=1024) stays in L2 while every row block of A streams past it.
5. Parallelise the fused (B panel, row block) loop over the cores, and the packing too.

Run `python -m chipbench.kernels.tir_gemm [M N K]` to time it against numpy and ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class GemmSchedule:
    mr: int = 8  # rows of C per register block (unrolled)
    nr: int = 32  # columns per register block: 2 × 16 fp32 lanes of a zmm register
    ku: int = 4  # k steps per inner loop body, unrolled


def gemm_func(m: int, n: int, k: int, nr: int = 32) -> Any:
    """The algorithm alone: pack B into nr-wide panels (zero-padded), then C = A · Bp."""
    from tvm import te, tirx

    a = te.placeholder((m, k), name="A")
    b = te.placeholder((k, n), name="B")
    panels = (n + nr - 1) // nr
    bp = te.compute(
        (panels, k, nr),
        lambda p, kk, c: tirx.if_then_else(p * nr + c < n, b[kk, p * nr + c], tirx.const(0, "float32")),
        name="Bp",
    )
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * bp[j // nr, r, j % nr], axis=r), name="C")
    return te.create_prim_func([a, b, c])


def schedule_gemm(func: Any, s: GemmSchedule = GemmSchedule()) -> Any:
    """Apply the schedule described in the module docstring; returns the scheduled IRModule."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    gemm = sch.get_sblock("C")
    i, j, k = sch.get_loops(gemm)
    i_out, i_reg = sch.split(i, [None, s.mr])
    j_out, j_reg = sch.split(j, [None, s.nr])
    k_out, k_in = sch.split(k, [None, s.ku])
    sch.reorder(j_out, i_out, k_out, k_in, i_reg, j_reg)  # B panel outer; registers innermost
    acc = sch.cache_write(gemm, 0, "local")  # mr × nr accumulator block...
    sch.reverse_compute_at(acc, i_out)  # ...written to C once per block
    sch.vectorize(j_reg)  # nr lanes → zmm FMAs
    sch.unroll(i_reg)  # mr independent accumulator rows
    sch.unroll(k_in)  # fewer loop branches, room for the scheduler to interleave loads
    sch.parallel(sch.fuse(j_out, i_out))
    sch.decompose_reduction(gemm, k_out)  # zero the accumulators before the k loop
    sch.vectorize(sch.get_loops(acc)[-1])
    pack = sch.get_sblock("Bp")
    p, _, c = sch.get_loops(pack)
    sch.vectorize(c)
    sch.parallel(p)
    return sch.mod


def build_gemm(m: int, n: int, k: int, s: GemmSchedule = GemmSchedule(), target: Any = None) -> Any:
    """Compile the scheduled GEMM for `target` (default: this host, all cores)."""
    import tvm

    from chipbench.backends.tvm import host_target, use_all_cores

    use_all_cores()  # TVM's x86 default is half the CPUs: one thread on a 2-vCPU VM
    return tvm.compile(schedule_gemm(gemm_func(m, n, k, s.nr), s), target=target or host_target())


def run_gemm(exe: Any, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import tvm

    dev = tvm.cpu()
    c = tvm.runtime.empty((a.shape[0], b.shape[1]), "float32", dev)
    exe["main"](tvm.runtime.tensor(a, dev), tvm.runtime.tensor(b, dev), c)
    return c.numpy()


def time_gemm(exe: Any, m: int, n: int, k: int, number: int = 10, repeat: int = 5) -> list[float]:
    """Seconds per call from TVM's `time_evaluator` (one warm-up call, then repeat × number)."""
    import tvm

    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.standard_normal(s, dtype=np.float32), dev) for s in ((m, k), (k, n))]
    args.append(tvm.runtime.empty((m, n), "float32", dev))
    return list(exe.mod.time_evaluator("main", dev, number=number, repeat=repeat)(*args).results)


def compare(m: int = 1024, n: int = 1024, k: int = 1024, rounds: int = 8, per_core: bool = False) -> dict[str, float]:
    """GFLOP/s of this schedule, numpy (BLAS) and ONNX Runtime on one shape, best of `rounds`
    alternating blocks (see `timing.best_seconds`); all three timed from Python alike.
    per_core: one thread each, timed by CPU time (needs `timing.single_thread_env()`)."""
    import time

    import tvm

    from chipbench.backends.base import CompileSpec, get_backend
    from chipbench.kernels.cases import gemm
    from chipbench.kernels.timing import SINGLE_THREAD_HINT, best_seconds, single_thread_env

    if per_core and not single_thread_env():
        raise RuntimeError(SINGLE_THREAD_HINT)
    case = gemm(f"{m}x{n}x{k}", m, n, k)
    inputs = case.make_inputs()
    a, b = inputs["A"], inputs["B"]
    exe = build_gemm(m, n, k)
    if case.error(run_gemm(exe, a, b), a @ b) > case.tolerance:
        raise AssertionError("TIR GEMM disagrees with numpy")
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev), tvm.runtime.tensor(b, dev), tvm.runtime.empty((m, n), "float32", dev)]
    ort = get_backend("ort-cpu").compile(case.source(), CompileSpec(threads=1 if per_core else None))
    best = best_seconds({"tir": lambda: exe["main"](*args), "numpy": lambda: a @ b,
                         "ort": lambda: ort.run(inputs)}, rounds,
                        clock=time.thread_time if per_core else time.perf_counter)
    return {name: case.flops / s / 1e9 for name, s in best.items()}


if __name__ == "__main__":  # python -m chipbench.kernels.tir_gemm [M N K] [--per-core]
    import sys

    shape = [int(x) for x in sys.argv[1:] if x.isdigit()] or [1024, 1024, 1024]
    for name, gflops in compare(*shape, per_core="--per-core" in sys.argv).items():
        print(f"{name:6s} {gflops:7.1f} GFLOP/s")
