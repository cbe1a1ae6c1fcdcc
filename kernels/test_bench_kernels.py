"""Kernel microbenchmarks: every case × backend, timed by pytest-benchmark.

    pytest kernels --benchmark-only --benchmark-json=results/kernels.json   # full-size cases
    pytest kernels                                                          # smoke, run once

Options: --kernel-tag (gemm, bert-base, deepbench, ...), --kernel-backends numpy,ort-cpu,...,
--results-dir (where `chipbench probe` saved this machine's ceilings; with one, each
row gets pct_of_roofline).

Backends run through `Compiled.run` (host arrays in and out, as the harness sees them);
"numpy" is the reference itself (BLAS for GEMMs, im2col + einsum for convolutions); "tir" is
the hand-scheduled TensorIR GEMM and conv2d on device-resident tensors (kernel time only).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from chipbench.backends.base import Arrays, CompileSpec, Unsupported, get_backend
from chipbench.kernels.cases import KernelCase

SLOW_S = 1.0  # a first call slower than this is timed once more, not pytest-benchmark's 5+ rounds


def make_runner(case: KernelCase, backend: str, inputs: Arrays) -> Callable[[], Any]:
    """A no-argument callable returning the output (array or TVM tensor); compiles first (not timed)."""
    if backend == "numpy":
        return lambda: case.ref(**inputs)
    if backend == "tir":
        return tir_runner(case, inputs)
    impl = get_backend(backend)
    ok, why = impl.available()
    if not ok:
        pytest.skip(why)
    try:
        compiled = impl.compile(case.source(), CompileSpec())
    except Unsupported as exc:
        pytest.skip(str(exc))
    return lambda: compiled.run(inputs)["Y"]


def tir_runner(case: KernelCase, inputs: Arrays) -> Callable[[], Any]:
    """The hand-written schedule on device-resident tensors; returns the output tensor."""
    import tvm

    from chipbench.kernels import tir_conv2d, tir_gemm

    if case.kernel == "gemm":
        exe = tir_gemm.build_gemm(case.params["M"], case.params["N"], case.params["K"])
    else:
        exe = tir_conv2d.build_conv2d(tir_conv2d.shape_of(case))
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(inputs[n], dev) for n in case.inputs]
    out = tvm.runtime.empty(case.output, "float32", dev)
    return lambda: (exe["main"](*args, out), out)[1]


def test_kernel(benchmark, case: KernelCase, backend: str, device_profile) -> None:
    inputs = case.make_inputs()
    run = make_runner(case, backend, inputs)
    benchmark.group = case.name
    benchmark.extra_info.update(kernel=case.kernel, backend=backend, params=case.params,
                                flops=case.flops, bytes=case.bytes, intensity=case.intensity)
    start = time.perf_counter()
    out = run()  # warm-up, and the output we check
    first_s = time.perf_counter() - start
    out = out if isinstance(out, np.ndarray) else out.numpy()
    assert case.error(out, case.ref(**inputs)) <= case.tolerance
    if first_s > SLOW_S:  # untuned TVM takes a minute on a 2048³ GEMM: time one more call only
        benchmark.pedantic(run, rounds=1, iterations=1)
    else:
        benchmark(run)
    if benchmark.stats is None:  # --benchmark-disable: ran as a test only
        return
    seconds = benchmark.stats.stats.median
    info = {"median_s": seconds, "gflops": case.flops / seconds / 1e9, "gbps": case.bytes / seconds / 1e9}
    if device_profile is not None:
        from chipbench.roofline import place

        point = place(device_profile, case.name, case.flops, case.bytes, seconds)
        info.update(pct_of_roofline=point.pct_of_roofline, bound=point.bound,
                    pct_of_peak=100 * info["gflops"] / device_profile.peak())
    benchmark.extra_info.update(info)
