"""Kernel microbenchmarks: every case × backend, timed by pytest-benchmark.

    pytest kernels --benchmark-only --benchmark-json=results/kernels.json   # full-size cases
    pytest kernels                                                          # smoke, run once

Backends run through `Compiled.run` (host arrays in and out, as the harness sees them);
"numpy" is the reference itself (BLAS for GEMMs, im2col + einsum for convolutions); "tir" is
the hand-scheduled TensorIR GEMM on device-resident tensors (kernel time only).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from chipbench.backends.base import Arrays, CompileSpec, Unsupported, get_backend
from chipbench.kernels.cases import KernelCase


def make_runner(case: KernelCase, backend: str, inputs: Arrays) -> Callable[[], np.ndarray]:
    """A no-argument callable returning the output; compiles first (not timed)."""
    if backend == "numpy":
        return lambda: case.ref(**inputs)
    if backend == "tir":
        import tvm

        from chipbench.kernels.tir_gemm import build_gemm

        exe = build_gemm(case.params["M"], case.params["N"], case.params["K"])
        dev = tvm.cpu()
        a, b = (tvm.runtime.tensor(inputs[n], dev) for n in ("A", "B"))
        c = tvm.runtime.empty(case.output, "float32", dev)
        return lambda: (exe["main"](a, b, c), c)[1]
    impl = get_backend(backend)
    ok, why = impl.available()
    if not ok:
        pytest.skip(why)
    try:
        compiled = impl.compile(case.source(), CompileSpec())
    except Unsupported as exc:
        pytest.skip(str(exc))
    return lambda: compiled.run(inputs)["Y"]


def test_kernel(benchmark, case: KernelCase, backend: str, device_profile) -> None:
    inputs = case.make_inputs()
    run = make_runner(case, backend, inputs)
    benchmark.group = case.name
    benchmark.extra_info.update(kernel=case.kernel, backend=backend, params=case.params,
                                flops=case.flops, bytes=case.bytes, intensity=case.intensity)
    out = benchmark(run)
    out = out if isinstance(out, np.ndarray) else out.numpy()
    assert case.error(out, case.ref(**inputs)) <= case.tolerance
    if benchmark.stats is None:  # --benchmark-disable: ran once, as a test
        return
    seconds = benchmark.stats.stats.median
    info = {"median_s": seconds, "gflops": case.flops / seconds / 1e9, "gbps": case.bytes / seconds / 1e9}
    if device_profile is not None:
        from chipbench.roofline import place

        point = place(device_profile, case.name, case.flops, case.bytes, seconds)
        info.update(pct_of_roofline=point.pct_of_roofline, bound=point.bound,
                    pct_of_peak=100 * info["gflops"] / device_profile.peak())
    benchmark.extra_info.update(info)
